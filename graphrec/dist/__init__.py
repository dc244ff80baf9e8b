"""Running graphrec on DGL's distributed engine: partitions, graph servers, DDP trainers.

``python -m graphrec.partition`` prepares the partitions, ``python -m graphrec.launch`` starts the
graph servers and trainers of one machine (see the README's "Several machines" section).
"""
