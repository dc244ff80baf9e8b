"""Running graphrec on DGL's distributed engine: partitions, graph servers, DDP trainers.

Laid out like DGL's distributed examples (``partition_graph.py``, ``train_dist.py``, ``tools/launch.py``):

* :mod:`.partition` (``python -m graphrec.partition``) → :mod:`.prepare`: the stages before the ranker, then the
  partitions with every ranker feature as node data;
* :mod:`.launch` (``python -m graphrec.launch``): starts one machine's :mod:`.server` processes and
  :mod:`.trainer` processes and watches them; a trainer walks (:mod:`.walk`), pre-trains Θ (:mod:`.graphcl`)
  and trains the ranker on its share;
* what they use: :mod:`.store` and :mod:`.packed` (the ``DistGraph`` feature store), :mod:`.comm` (one process
  or DDP), :mod:`.lifecycle` (processes live and die with their launcher; the watchdog).

See docs/distributed.md.
"""
