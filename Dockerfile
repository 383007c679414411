# chat-stream-proxy: docker build -t chat-stream-proxy . && docker run -p 8000:8000 chat-stream-proxy
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first, in their own layer, rebuilt only when pyproject.toml changes: pip reads
# them from pyproject.toml itself (an empty package stands in for the code), so the image can
# never drift from what the package declares.
COPY pyproject.toml README.md ./
RUN mkdir proxy && touch proxy/__init__.py \
    && pip install . \
    && pip uninstall --yes chat-stream-proxy \
    && rm -rf proxy build ./*.egg-info

COPY proxy ./proxy
# Debian already has a system user named "proxy" (uid 13): ours is chat-stream-proxy.
RUN pip install --no-deps . \
    && rm -rf build ./*.egg-info \
    && useradd --create-home --uid 10001 --shell /usr/sbin/nologin chat-stream-proxy

# The default config serves the echo model; mount your own over it, or set PROXY_CONFIG.
COPY config/proxy.yaml /etc/chat-stream-proxy/proxy.yaml
ENV PROXY_CONFIG=/etc/chat-stream-proxy/proxy.yaml \
    PROXY_LOG_FORMAT=json

USER 10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
# SIGTERM (docker stop, Kubernetes) drains: streams get shutdown_grace_seconds to finish.
STOPSIGNAL SIGTERM
CMD ["chat-stream-proxy", "serve", "--host", "0.0.0.0", "--port", "8000"]
