"""Model inputs: image transforms and augmentation, the training/evaluation collator and inference inputs."""
