"""What a figure becomes: backbones ending in the last conv map, the model file, CRM (and CAM,
Grad-CAM), ROI boxes. torch and numpy only: no Ray, no storage."""
