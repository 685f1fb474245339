"""What a student learns on: without --data, its teachers' data (they must agree on it); a --data that does not
fit the teachers is refused in one line that names --data."""

from __future__ import annotations

import pytest

from cnnkit.artifacts import load
from tests.cli.test_cli import run
from tests.conftest import write_imagefolder

STUDENT = ("--model", "resnet9", "--model-kw", "width=4", "--epochs", "1", "--batch-size", "16", "--quiet")


@pytest.fixture(scope="module")
def folder_teacher(tmp_path_factory, sample_train):
    """A teacher trained on an image folder of three classes (not the sample's ten)."""
    from cnnkit.train import fit

    root = write_imagefolder(tmp_path_factory.mktemp("images") / "three", sample_train, mixed=False)
    return fit(model="resnet9", model_kwargs={"width": 4}, data=f"imagefolder:{root}", epochs=1, batch_size=16,
               out=str(tmp_path_factory.mktemp("teacher") / "run"), progress=False)


def test_a_student_given_no_data_learns_on_its_teachers_data(folder_teacher, tmp_path, capsys):
    code, out, err = run(capsys, "distill", "--teacher", str(folder_teacher.run_dir), *STUDENT,
                         "--out", str(tmp_path / "student"))
    assert code == 0, err
    assert load(tmp_path / "student").meta["config"]["data"] == folder_teacher.config.data
    assert "the teachers' (give --data for other data)" in out  # the summary says where the data came from


def test_data_that_does_not_fit_the_teachers_is_refused_naming_data(folder_teacher, trained_run, tmp_path, capsys):
    code, _, err = run(capsys, "distill", "--teacher", str(folder_teacher.run_dir), "--data", "sample", *STUDENT,
                       "--out", str(tmp_path / "s1"))
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "predicts other classes than --data's" in err and "leave out --data" in err
    assert f"trained on {folder_teacher.config.data}" in err
    # teachers of different data: which data is the student's is the user's call
    code, _, err = run(capsys, "distill", "--teacher", str(folder_teacher.run_dir), "--teacher",
                       str(trained_run.run_dir), *STUDENT, "--out", str(tmp_path / "s2"))
    assert code == 2 and "the teachers were trained on different data" in err and "give --data" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "s2").exists()
