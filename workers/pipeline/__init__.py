"""What a task does with a chunk, in the order it happens:

    read.py      fetch the chunk and its images from the store (cached per process)
    run.py       run one stage's backend over the chunk in mini-batches, isolating bad items
    compose.py   merge the stage partials into result records, build each prompt
    generate.py  run the generator over the prompts (and source images)
    write.py     store generated images and result records; summarise the chunk

Plain functions over the typed records of ``workers.records``; ``workers.tasks`` wraps them
in Celery tasks, and ``itx run`` calls the very same tasks eagerly.
"""
