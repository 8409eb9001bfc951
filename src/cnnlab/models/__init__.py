"""The networks, one module per family, all reachable through the registry."""

from cnnlab.models import alexnet, custom, lenet, speednet  # noqa: F401  (registers them)
from cnnlab.models.registry import (
    code_of,
    count_macs,
    count_parameters,
    create_model,
    fit_to_data,
    get_model,
    is_user_code,
    list_models,
    register_model,
    start_epoch,
    trusted_code,
)

__all__ = ["code_of", "count_macs", "count_parameters", "create_model", "fit_to_data",
           "get_model", "is_user_code", "list_models", "register_model", "start_epoch",
           "trusted_code"]
