"""The bundled synthetic world: taxonomies, scenes, renderer, and corpora in real formats."""
