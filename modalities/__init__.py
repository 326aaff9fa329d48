"""Data, per modality: readers, Hugging Face adapters, augmentations, embedded demo data."""
