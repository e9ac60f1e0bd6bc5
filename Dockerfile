# Pinned builder and runtime images; the indexer runs as an unprivileged user.
FROM rust:1.89.0-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin cdc-indexer

FROM debian:bookworm-20241111-slim
RUN useradd --system --uid 10001 --home /var/lib/cdc-indexer cdc && mkdir -p /var/lib/cdc-indexer && chown cdc /var/lib/cdc-indexer
COPY --from=build /src/target/release/cdc-indexer /usr/local/bin/cdc-indexer
COPY mappings /etc/cdc-indexer/mappings
COPY dict /etc/cdc-indexer/dict
COPY cdc-indexer.example.toml /etc/cdc-indexer/cdc-indexer.toml
USER cdc
WORKDIR /var/lib/cdc-indexer
ENV CDC_STATE__DIR=/var/lib/cdc-indexer CDC_TABLES__0__MAPPING=/etc/cdc-indexer/mappings/orders.json CDC_TABLES__1__MAPPING=/etc/cdc-indexer/mappings/event_log.json CDC_SEARCH__USER_DICT=/etc/cdc-indexer/dict/shop.dict
ENTRYPOINT ["cdc-indexer", "run", "--config", "/etc/cdc-indexer/cdc-indexer.toml"]
