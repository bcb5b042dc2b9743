# QuDAG-Evo node image: `qudag-node` as the entrypoint, `run` by default.
#
#   docker build -t qudag-evo .
#   docker run --rm -p 8700:8700 -v qudag-data:/var/lib/qudag qudag-evo
#
# Two stages: the builder compiles the dependencies that ship no wheel here (fastecdsa links
# GMP), the runtime image only gets the virtualenv, GMP and a non-root user.

FROM python:3.11-slim AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential libgmp-dev \
 && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# Dependencies first (cached while only the source changes).
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; d = tomllib.load(open('pyproject.toml', 'rb')); \
print('\n'.join(d['project']['dependencies']))" > /tmp/requirements.txt
RUN pip install -r /tmp/requirements.txt
COPY crypto ./crypto
COPY dag ./dag
COPY evolution ./evolution
COPY node ./node
COPY simulations ./simulations
RUN pip install --no-deps .

FROM python:3.11-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgmp10 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/qudag --shell /usr/sbin/nologin qudag \
 && mkdir -p /var/lib/qudag /etc/qudag \
 && chown qudag:qudag /var/lib/qudag
COPY --from=build /opt/venv /opt/venv
COPY deploy/node.toml /etc/qudag/node.toml
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    QUDAG_DATA_DIR=/var/lib/qudag \
    QUDAG_HTTP=0.0.0.0:8700
USER qudag
WORKDIR /var/lib/qudag
VOLUME ["/var/lib/qudag"]
# 4001: libp2p (TCP); 8700: HTTP /status and /metrics.
EXPOSE 4001 8700
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD ["qudag-node", "status", "--http", "127.0.0.1:8700", "--json", "--timeout", "4"]
ENTRYPOINT ["qudag-node"]
CMD ["run", "--listen", "/ip4/0.0.0.0/tcp/4001"]
