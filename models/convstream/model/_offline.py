"""Keep onnxruntime from writing a device id and a telemetry store into the user's home.

onnxruntime (1.32) creates ``~/.cache/Microsoft/DeveloperTools/.onnxruntime/`` when it is
imported: a ``deviceid`` and a SQLite event store, 380 KB, under the home of whoever runs it (a
service user without a home gets a warning, or a folder made where its home would be).
convstream runs offline and keeps nothing outside its own files, so that is off unless the
environment already says otherwise (``ORT_DISABLE_TELEMETRY=0``). onnxruntime reads the
variable once, when it loads: this module is imported before it, by ``convstream.model`` and
``convstream.server``.
"""

import os

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
