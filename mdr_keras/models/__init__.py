"""Models of mdr: towers, retrieval and ranking models wiring encoders, embeddings, backbones and tasks."""
