# CPU image for the data stages (topics ... filter): `kakugo stage <name> --spec FILE`.
# Build from the repository root: docker build -f images/stages.Dockerfile -t kakugo-stages .
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY kakugo_stages ./kakugo_stages
COPY operator ./operator
RUN pip wheel --no-cache-dir --wheel-dir /wheels '.[stages]'

FROM python:3.11-slim
RUN useradd --uid 10001 --create-home kakugo
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER 10001
ENV HOME=/home/kakugo PYTHONUNBUFFERED=1
ENTRYPOINT ["kakugo"]
CMD ["--help"]
