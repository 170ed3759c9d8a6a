"""Host adapters for the engine's port."""
