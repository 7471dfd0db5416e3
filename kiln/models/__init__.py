"""Model families, one module each (config dataclass, graph builders, weight mapping, loader).

`kiln.load` picks the family from config.json's model_type through `kiln.models.registry`;
family modules are imported only when a checkpoint of theirs is loaded.
"""
