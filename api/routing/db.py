"""Which database each model lives on.

`meta` (alias `default`) holds accounts and anything global; the data models live on the data
primary. Later, replicas and shards extend this one router rather than adding another.
"""
DATA_MODELS = {"user", "post"}
PRIMARY = "primary"
META = "default"


def alias_for(model) -> str:
    meta = model._meta
    return PRIMARY if meta.app_label == "api" and meta.model_name in DATA_MODELS else META


class Router:
    def db_for_read(self, model, **hints):
        return alias_for(model)

    def db_for_write(self, model, **hints):
        return alias_for(model)

    def allow_relation(self, obj1, obj2, **hints):
        return alias_for(type(obj1)) == alias_for(type(obj2))

    def allow_migrate(self, db, app_label, model_name=None, **hints):
        if app_label == "api" and model_name in DATA_MODELS:
            return db == PRIMARY
        # Everything else is global and lives in meta; contenttypes and auth stay out of data DBs.
        return db == META
