"""The service's routes, one router per group: health (liveness, readiness, metrics), catalog (the models
served and their cards), inference (predict, explain) and explore (the browser explorer and its API)."""
