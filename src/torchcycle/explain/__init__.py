"""Explanations: SHAP for tabular models, Grad-CAM for image models; pure functions, no I/O."""
