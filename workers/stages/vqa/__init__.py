"""Visual question answering backends: one module per family."""
