"""Merging checkpoints into one: model soups (Wortsman et al. 2022), the uniform and the greedy average of the
weights of runs fine-tuned from one initialization, chosen on the images none of them trained on, with their
BatchNorm statistics measured again. Checkpoints in, one checkpoint out (`make_soup`, `cnnkit soup`)."""

from cnnkit.merge.average import average_states, batchnorms, recompute_bn
from cnnkit.merge.ingredients import (Ingredient, bn_subset, check_same_architecture, check_shared_init,
                                      held_out_indices, ingredient_name, load_ingredients)
from cnnkit.merge.soup import (METHODS, GreedyStep, Scorer, SoupResult, SoupRow, how_scored, make_soup,
                              write_tables)

__all__ = ["METHODS", "GreedyStep", "Ingredient", "Scorer", "SoupResult", "SoupRow", "average_states", "batchnorms",
           "bn_subset", "check_same_architecture", "check_shared_init", "held_out_indices", "how_scored", "ingredient_name",
           "load_ingredients", "make_soup", "recompute_bn", "write_tables"]
