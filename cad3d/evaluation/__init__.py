"""Evaluation: metrics (`metrics`), baselines (`baselines`), the loop over methods and a split
(`evaluate`), its reports (`report`) and training loss curves (`curves`)."""
