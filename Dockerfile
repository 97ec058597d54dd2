# syntax=docker/dockerfile:1
#
# giftxd (and giftctl) in a small runtime image.
#
#   docker build -t giftx:dev .
#   docker run --rm -p 50051:50051 -p 9090:9090 giftx:dev
#
# With no configuration the container serves every service on the embedded
# ledger with the demo campaigns; deploy/compose and deploy/kubernetes show
# the Redis-backed shapes. See docs/OPERATING.md.

FROM rust:1.95-bookworm AS build
WORKDIR /src
# protox compiles the protos in-process: no system protoc needed.
COPY . .
# Cache mounts keep the registry and target dir between builds; the
# binaries are copied out because the mount is gone after this step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p giftx-server -p giftx-cli \
 && mkdir -p /out \
 && cp target/release/giftxd target/release/giftctl /out/

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 giftx \
 && useradd --system --uid 10001 --gid giftx --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin giftx
COPY --from=build /out/giftxd /out/giftctl /usr/local/bin/
# In a container, listen on every interface (the binary's default is
# loopback). Metrics are on their own port; JSON logs for collectors.
ENV GIFTX_LISTEN=0.0.0.0:50051 \
    GIFTX_METRICS_LISTEN=0.0.0.0:9090 \
    GIFTX_LOG_FORMAT=json
USER 10001:10001
EXPOSE 50051 9090
ENTRYPOINT ["giftxd"]
