"""Analysis-facility spawner for JupyterHub."""
