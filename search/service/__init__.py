"""The search service: submit, watch, cancel, resume and fetch searches over HTTP.

``python scripts/serve.py`` serves :func:`search.service.app.create_app` with uvicorn. The parts:

- :mod:`~search.service.settings`: the frozen :class:`ServiceConfig` and the bearer token;
- :mod:`~search.service.db`: SQLAlchemy tables (searches, an append-only event log);
- :mod:`~search.service.validation`: request settings through the same parser and configs as
  ``scripts/search.py``; :mod:`~search.service.names`: the models, datasets and factories they name, resolved;
- :mod:`~search.service.executor`: where a search runs (:class:`LocalProcessExecutor`: one process each);
- :mod:`~search.service.ray_jobs`: or a Ray job each on a cluster (``serve.py --ray-address``);
- :mod:`~search.service.worker`: the entry point of that process (``search.launch.main``);
- :mod:`~search.service.manager` and :mod:`~search.service.scheduler`: states, the queue, progress;
- :mod:`~search.service.app`, :mod:`~search.service.routes`, :mod:`~search.service.schemas`: HTTP;
  :mod:`~search.service.summary`: what a search's view shows beside its rows;
- :mod:`~search.service.web`: the web page at ``/`` (``static/``) and optuna-dashboard at ``/dashboard``.
"""
