"""Stage backends, no Celery in them: ocr -> caption -> vqa -> edit -> generate.

``table`` declares every backend (stage, name, queue, inputs, batch sizes, tiny builder,
refs per profile); ``base.Backend`` is the shape each one has. Backend modules are imported
only when a backend is first loaded.
"""
