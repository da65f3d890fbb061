"""Student models: one small interface, a registry, and the shared training machinery."""
