"""A submission as a Kaggle code-competition package: a dataset (models, coefficients, weights, thresholds,
oofline's own code as a wheel) and an offline notebook that rebuilds the submission on the hidden test.

`package` builds it (the rule's step), `inference` is what the notebook runs (the workflow's own predict,
ensemble, thresholds and submission functions, on the hidden test), `plan` estimates the notebook's
runtime, `wheels` builds oofline's wheel and fetches pinned wheels at build time.
"""
