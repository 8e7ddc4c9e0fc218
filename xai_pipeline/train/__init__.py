"""Training and evaluation of modality classifiers: data sets, augmentation, synthetic figures,
the fit (here or on Ray Train), metrics and the model card."""
