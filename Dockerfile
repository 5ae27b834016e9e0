# syntax=docker/dockerfile:1
# herald's container image: `docker build -t herald .` (or `make image`).
#
# Build stage: rdkafka's `cmake-build` feature compiles librdkafka from source,
# so the builder needs cmake and the libcurl headers (rdkafka's cmake-build).
# libssl-dev is there for when rdkafka's `ssl` feature is turned on (needed for
# SASL_SSL/TLS to Kafka; docs/deploying.md); today's build does not use it.
FROM rust:1-bookworm AS build
# Unpinned on purpose: bookworm's security updates replace pinned versions.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      cmake pkg-config g++ make libcurl4-openssl-dev libssl-dev zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*
# zlib is linked statically (libz-sys builds its bundled copy), so the runtime
# image needs nothing beyond glibc, libgcc and (with `ssl`) libssl3.
ENV LIBZ_SYS_STATIC=1
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin herald \
 && install -D -m 0755 target/release/herald /out/herald

# Runtime: distroless with glibc and libgcc, no shell, user 65532 (nonroot).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/herald /usr/local/bin/herald
USER 65532:65532
ENV HERALD_LISTEN=0.0.0.0:8080
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/herald"]
CMD ["serve"]
