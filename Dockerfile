# The sandbox image: Python 3 with its standard library, a non-root user, and the runner that executes
# untrusted programs for `sandbox` (see sandbox/__init__.py for what it protects against).
#
# Offline (no registry): `make sandbox-image` (sandbox/scripts/build-image.sh) builds a Debian bookworm base
# with debootstrap + `docker import` and passes it as BASE. Where a registry is reachable this file also
# builds on its own:  docker build -t reasoner-sandbox:latest .
ARG BASE=python:3.11-slim
FROM ${BASE}

ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    TMPDIR=/tmp

# The job user owns nothing in the image: programs can write only to the tmpfs mounts the pool adds.
RUN echo 'sandbox:x:10001:10001:sandbox:/tmp:/usr/sbin/nologin' >> /etc/passwd \
 && echo 'sandbox:x:10001:' >> /etc/group \
 && mkdir -p /opt/sandbox \
 && python3 -c "import ctypes, json, resource, select, hashlib"

COPY sandbox/runner.py /opt/sandbox/runner.py
RUN chmod 0444 /opt/sandbox/runner.py

USER 10001:10001
WORKDIR /tmp
# The runner must be PID 1 (no --init): init cannot be signalled from inside its PID namespace, and it
# reaps and kills everything a job leaves behind.
ENTRYPOINT ["python3", "-I", "/opt/sandbox/runner.py", "--mode", "container"]
