FROM python:3.11-slim
WORKDIR /app
ENV PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY pyproject.toml README.md ./
COPY claimgate claimgate
COPY gateway gateway
COPY worker worker
COPY lua lua
COPY migrations migrations
COPY loadtest loadtest
RUN pip install --no-cache-dir -e '.[load]'
RUN useradd --system --no-create-home claimgate
USER claimgate
EXPOSE 8000
CMD ["claimgate", "serve", "--host", "0.0.0.0", "--port", "8000", "--workers", "2"]
