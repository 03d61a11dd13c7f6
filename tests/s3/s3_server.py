"""A real S3-protocol server for the object-store tests (tests/tests/object_store.rs): moto's server
(PyPI `moto[server]`, installed by tools/test.sh into target/s3-venv), on 127.0.0.1, in its own
process, spoken to over HTTP with AWS Signature V4 like any S3 endpoint.

It serves one request at a time: moto checks a conditional write (If-None-Match: *, If-Match: ETag)
and then writes, two steps that threads could interleave; one at a time they are atomic, as S3's are.

    s3_server.py PORT [BUCKET ...]   # PORT 0: any free port; prints "listening on PORT" once the
                                     # buckets exist and it accepts requests
"""
import sys
import threading
import urllib.request

from werkzeug.serving import make_server
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app


def main() -> None:
    port, buckets = int(sys.argv[1]), sys.argv[2:]
    app = DomainDispatcherApplication(create_backend_app)
    server = make_server("127.0.0.1", port, app, threaded=False, request_handler=MotoRequestHandler)
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    for bucket in buckets:
        urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{server.port}/{bucket}", method="PUT")).read()
    print(f"listening on {server.port}", flush=True)
    serving.join()


if __name__ == "__main__":
    main()
