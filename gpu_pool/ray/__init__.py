"""The pool on Ray Serve (``[pool] backend = "ray"``): many GPUs, many machines.

    bot ── PoolClient (unchanged) ── unix socket / TCP ──▶ python -m gpu_pool   (front.py: a Ray driver)
                                                             │ DeploymentHandle, multiplexed_model_id=model,
                                                             │ stream=True; routed by router.py
                                                             ▼
                                          Serve replicas (replica.py), one per GPU: Registry + Scheduler

The seam: the pool process keeps its place and its protocol, and only what
runs behind its HTTP face changes. With ``backend = "ray"``,
``python -m gpu_pool`` starts (or joins) a Ray cluster, deploys the replicas
and serves the same routes (``gpu_pool/routes.py``) as the local pool, forwarding each job to
a replica through a Serve handle and each event back as a protocol frame. So
the core, its ``PoolClient`` and the bot's supervision of its pool child stay
exactly as they are, the pool URL included, and nothing of the bot imports
Ray. The two alternatives cost more: a Serve HTTP ingress behind Serve's
proxy adds a hop and a startup window where the proxy answers 404 pages the
client cannot read; a second client class makes the bot a Ray driver and
duplicates the client's failure handling.

The pool process must run on a node of the cluster (the head, usually, next
to the bot). Every node needs the project, its virtual environment and the
config file at the same paths, as Ray needs the same Python everywhere.
Queue position and progress are the replica's own events, streamed back.
"""
