"""The GCS emulator the ``gs://`` tests run: ``gcp-storage-emulator`` with GCS's generation rules.

``python -m tests.gcs_emulator start --host=localhost --port=N --in-memory``
(the emulator's own command line). The pure-Python emulator stores each
object's ``generation`` but, unlike GCS, ignores the generation preconditions
of a request and sends no ``x-goog-generation`` header with an object's
bytes. TensorStore's GCS driver relies on both when it updates an OCDBT
manifest in place (a read ``ifGenerationNotMatch`` a generation it holds, then
a write ``ifGenerationMatch`` it): without them the second save of one
checkpoint fails now and then with "Malformed StorageGeneration". This module
adds what GCS documents, before the emulator's routes are built:

* a media download carries ``x-goog-generation``; with
  ``ifGenerationNotMatch=G`` (G the object's generation) it answers 304, with
  ``ifGenerationMatch=G`` (another generation, or the object absent) 412;
* an upload with ``ifGenerationMatch=G`` answers 412 unless the object's
  generation is G (``0``: unless the object does not exist) -- what makes the
  ``trajax.workdir_lock`` lease's create-if-absent atomic on GCS.

(https://cloud.google.com/storage/docs/request-preconditions.) Nothing of
trajax is replaced: this is the bucket API the code under test talks to.
"""

from __future__ import annotations

import sys
from http import HTTPStatus


def _generation(storage, request) -> str | None:
  from gcp_storage_emulator.exceptions import NotFound

  params = request.params
  bucket = params.get("bucket_name")
  name = params.get("object_id") or (request.query.get("name") or [None])[0]
  if not name and (request.query.get("uploadType") or [None])[0] == "multipart":
    name = request.data["meta"].get("name")  # a multipart upload names it in its body
  if not bucket or not name:
    return None
  try:
    return str(storage.get_file_obj(bucket, name)["generation"])
  except (NotFound, KeyError):
    return None


def _query(request, key) -> str | None:
  values = request.query.get(key)
  return values[0] if values else None


def _patch():
  from gcp_storage_emulator.handlers import objects

  download, insert = objects.download, objects.insert

  def download_with_generation(request, response, storage, *args, **kwargs):
    gen = _generation(storage, request)
    match, not_match = _query(request, "ifGenerationMatch"), _query(request, "ifGenerationNotMatch")
    if match is not None and match != (gen or "0"):
      response.status = HTTPStatus.PRECONDITION_FAILED
      return None
    if gen is not None and not_match == gen:
      response.status = HTTPStatus.NOT_MODIFIED
      response["x-goog-generation"] = gen
      return None
    out = download(request, response, storage, *args, **kwargs)
    if gen is not None:
      response["x-goog-generation"] = gen
    return out

  def insert_with_precondition(request, response, storage, *args, **kwargs):
    match = _query(request, "ifGenerationMatch")
    if match is not None and match != (_generation(storage, request) or "0"):
      response.status = HTTPStatus.PRECONDITION_FAILED
      return None
    return insert(request, response, storage, *args, **kwargs)

  objects.download = download_with_generation
  objects.insert = insert_with_precondition


def main(argv=None):
  _patch()  # before the server module builds its routes from these functions
  from gcp_storage_emulator.__main__ import main as emulator_main

  return emulator_main(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
  sys.exit(main())
