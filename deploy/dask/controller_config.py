# dask-gateway-kube-controller -f deploy/dask/controller_config.py
# (dask-gateway's own controller; with AFKubeBackend the gateway decides what the pods get)
import os

c = get_config()  # type: ignore[name-defined]  # noqa: F821
c.KubeController.gateway_instance = os.environ.get("DASK_GATEWAY_INSTANCE", "af-dask")
c.KubeController.address = os.environ.get("DASK_CONTROLLER_ADDRESS", "0.0.0.0:8000")
# where schedulers reach the gateway's API (heartbeats) and the proxy's route prefix
c.KubeController.api_url = os.environ.get(
    "DASK_GATEWAY_API_URL", "http://dask-gateway-api:8000/api"
)
c.KubeController.proxy_prefix = ""
c.KubeController.proxy_web_entrypoint = "web"
c.KubeController.proxy_tcp_entrypoint = "tcp"
