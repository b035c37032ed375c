// Placeholder: filled in by the selector test work.
