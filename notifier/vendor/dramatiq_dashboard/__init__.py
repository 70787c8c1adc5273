from .application import DashboardApp

__all__ = ["DashboardApp"]
__version__ = "0.4.0"
