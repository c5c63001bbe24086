from django.apps import AppConfig


class AsyncGateSiteConfig(AppConfig):
    name = "asyncgate_site"
    verbose_name = "AsyncGate"

    def ready(self) -> None:
        from asyncgate_site import checks  # noqa: F401
