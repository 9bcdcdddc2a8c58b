# Test only: Redis from Debian's package, standing in for the official redis image.
ARG BASE=hetserve-test-base:bookworm
FROM ${BASE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends redis-server \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /data \
 && chown redis:redis /data
USER redis
WORKDIR /data
# The official image turns protected mode off: other containers connect without a password.
ENTRYPOINT ["/bin/sh", "-c", "if [ \"$1\" = redis-server ]; then set -- \"$@\" --protected-mode no; fi; exec \"$@\"", "redis-entrypoint"]
CMD ["redis-server"]
