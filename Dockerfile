# syntax=docker/dockerfile:1.7
#
# trafficshift container image: one static binary on distroless.
#
#   docker build --build-arg REVISION=$(git rev-parse --short=12 HEAD) -t trafficshift:0.1.0 .
#
# scripts/check-static-binary builds exactly like the build stage below and runs the binary in an
# empty chroot, so a static-linking regression is caught without Docker.
# Tags are pinned; pin digests (image@sha256:...) in your registry mirror for reproducible builds.
# The Rust tag names the exact release: link/startup-order.txt names symbols whose hashes depend
# on the compiler (scripts/check-static-binary fails when this machine's rustc is another).

ARG RUST_IMAGE=rust:1.95.0-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/static-debian12:nonroot

FROM ${RUST_IMAGE} AS build
WORKDIR /src
# The context has no .git: `--build-arg REVISION=$(git rev-parse --short=12 HEAD)` names the
# revision for trafficshift_build_info{revision} (build.rs), else it reads "unknown".
ARG REVISION=unknown
ENV TRAFFICSHIFT_GIT_REVISION=${REVISION}
# Static glibc: glibc >= 2.34 carries nss_files/nss_dns inside libc, so name resolution works
# without NSS modules in the runtime image. TLS is rustls; CA roots come from the runtime image.
# Idle memory (docs/BENCHMARKS.md, issue 11):
# - packed relative relocations (DT_RELR, glibc >= 2.36, bookworm has 2.36): the static-pie binary
#   relocates itself at start, and its 1.4 MiB table of RELA entries, read whole at every start,
#   becomes a 17 KiB bitmap;
# - identical code folding (lld --icf=all): generic code that compiles to the same machine code
#   is kept once (-3 % code). It folds code only, never data (statics keep their own addresses);
#   Rust does not promise distinct function addresses, so no behaviour depends on them.
# - the code the controller runs first (link/startup-order.txt, from scripts/gen-link-order) placed
#   together at the front (lld --symbol-ordering-file): the kernel maps the 64 KiB of code around
#   every page a process touches, so a few thousand functions spread over 15 MiB of code kept most
#   of it resident. A name the linker does not find is skipped (a stale list costs memory, never
#   correctness), hence --no-warn-symbol-ordering. The path is relative to the crate root, where
#   cargo runs rustc and so the linker.
# scripts/check-static-binary reads this line: keep RUSTFLAGS on one line.
ENV RUSTFLAGS="-C target-feature=+crt-static -C link-arg=-Wl,-z,pack-relative-relocs -C link-arg=-Wl,--icf=all -C link-arg=-Wl,--symbol-ordering-file=link/startup-order.txt -C link-arg=-Wl,--no-warn-symbol-ordering" \
    CARGO_TERM_COLOR=never
COPY Cargo.toml Cargo.lock ./
COPY link ./link
COPY src ./src
# Optional crate parts; BuildKit accepts a wildcard that matches nothing, so these stay valid
# whether or not the crate has them (Cargo rejects a manifest whose declared targets are missing).
COPY build.rs* ./
COPY benches* ./benches/
COPY tests* ./tests/
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --target x86_64-unknown-linux-gnu \
 && install -D -m 0755 target/x86_64-unknown-linux-gnu/release/trafficshift /out/trafficshift \
 && /out/trafficshift --version

FROM ${RUNTIME_IMAGE}
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="trafficshift" \
      org.opencontainers.image.description="Reconciling controller that shifts traffic between AWS backends (API Gateway, ECS Fargate) through Route53 weighted records" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/trafficshift/trafficshift" \
      org.opencontainers.image.documentation="https://github.com/trafficshift/trafficshift/tree/main/docs" \
      org.opencontainers.image.base.name="gcr.io/distroless/static-debian12:nonroot"
COPY --from=build /out/trafficshift /trafficshift
# distroless "nonroot" user; the Helm chart and manifests/ pin the same uid.
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/trafficshift"]
CMD ["run", "--config", "/etc/trafficshift"]
