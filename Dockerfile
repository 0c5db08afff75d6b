# tsagent as a container, for the sidecar use (docs/deployment.md#container).
#
#   docker build -t tsagent .
#   docker run -d -p 9201:9201 -v tsagent-data:/data tsagent
#
# Config: mount a file at /etc/tsagent/tsagent.yaml, or pass the YAML itself in
# TSAGENT_CONFIG_YAML; ${ENV_VAR} in either is expanded (secrets). Without either,
# the built-in defaults. Data in the /data volume. Listens on 0.0.0.0:9201
# (TSAGENT_LISTEN; set it empty to use the config's `listen`).

# Build the wheel apart, so the image holds no compiler, no pip cache, no source.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY agent ./agent
COPY plugins ./plugins
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
# The same layout as contrib/install.sh: a venv in /opt/tsagent, runtime dependencies only.
COPY --from=build /wheels /wheels
RUN python -m venv /opt/tsagent \
 && /opt/tsagent/bin/pip install --no-cache-dir --disable-pip-version-check /wheels/*.whl \
 && rm -rf /wheels \
 && useradd --system --uid 10001 --user-group --home-dir /data --shell /usr/sbin/nologin tsagent \
 && mkdir -p /data /etc/tsagent \
 && chown tsagent:tsagent /data
COPY contrib/container/entrypoint.sh /usr/local/bin/tsagent-entrypoint
COPY contrib/container/healthcheck.py /usr/local/bin/tsagent-healthcheck

# The variables systemd would set: tsagent reads its data dir and optional config from them.
ENV PATH=/opt/tsagent/bin:$PATH \
    STATE_DIRECTORY=/data \
    CONFIGURATION_DIRECTORY=/etc/tsagent \
    TSAGENT_LISTEN=0.0.0.0:9201 \
    PYTHONUNBUFFERED=1

VOLUME ["/data"]
EXPOSE 9201
USER 10001:10001
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD ["/opt/tsagent/bin/python", "/usr/local/bin/tsagent-healthcheck"]
ENTRYPOINT ["/usr/local/bin/tsagent-entrypoint"]
CMD ["run"]
