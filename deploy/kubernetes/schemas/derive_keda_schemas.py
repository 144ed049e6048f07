"""Write keda.sh/*.json, the JSON schemas the tests check KEDA objects against.

KEDA publishes its CRDs (openAPIV3Schema) with each release; no package
registry this project can reach ships them as files, but the npm package
``@kubernetes-models/keda@0.3.1`` (MIT) ships KEDA 2.10.1's CRD schemas
(generated from keda-2.10.1.yaml) as JSON objects inside its modules. This
script takes those and:

- turns OpenAPI's ``nullable: true`` into JSON Schema's ``"null"`` type;
- inlines ``metadata`` (a ``$ref`` to ObjectMeta elsewhere in that package);
- adds what KEDA's CRD gained up to 2.16 (``spec.initialCooldownPeriod``,
  ``spec.advanced.scalingModifiers``: the fields of
  ``ScaledObjectSpecAdvancedScalingModifiers`` in the PyPI package
  ``cloudcoil-models-keda==2.16.1.0``, generated from KEDA 2.16.1's CRD);
- forbids unknown fields in every object whose fields the CRD lists, as the
  API server's strict field validation (kubectl's default) does.

Run once when KEDA's schema needs refreshing (needs npm):

    npm pack @kubernetes-models/keda@0.3.1 && tar xzf kubernetes-models-keda-0.3.1.tgz
    python deploy/kubernetes/schemas/derive_keda_schemas.py package/
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SOURCE = "@kubernetes-models/keda@0.3.1 (KEDA 2.10.1's CRDs)"
KINDS = {"ScaledObject": "scaledobject_v1alpha1.json",
         "TriggerAuthentication": "triggerauthentication_v1alpha1.json"}
METADATA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"}, "namespace": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}
#: KEDA 2.12 (scalingModifiers) and 2.16 (initialCooldownPeriod).
SCALING_MODIFIERS = {
    "type": "object",
    "properties": {name: {"type": "string"} for name in
                   ("activationTarget", "formula", "metricType", "target")},
    "description": "ScalingModifiers describes advanced scaling logic options like "
                   "formula (KEDA 2.12+)",
}


def module_schema(path: Path) -> dict[str, Any]:
    found = re.search(r"const schema = (\{.*?\n\});", path.read_text(), re.S)
    if found is None:
        raise SystemExit(f"{path}: no schema object")
    return json.loads(found.group(1))


def normalize(node: Any) -> Any:
    if isinstance(node, list):
        return [normalize(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: normalize(v) for k, v in node.items() if k != "nullable"}
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if out.get("properties") and "additionalProperties" not in out:
        out["additionalProperties"] = False
    if out.get("properties") == {}:
        del out["properties"]
    return out


def derive(package: Path, kind: str) -> dict[str, Any]:
    schema = module_schema(package / "keda.sh" / "v1alpha1" / f"{kind}.js")
    schema["properties"]["metadata"] = METADATA
    if kind == "ScaledObject":
        spec = schema["properties"]["spec"]["properties"]
        spec["initialCooldownPeriod"] = {"type": "integer", "format": "int32"}
        spec["advanced"]["properties"]["scalingModifiers"] = SCALING_MODIFIERS
    out = normalize(schema)
    out["properties"]["metadata"]["additionalProperties"] = True  # ObjectMeta has more
    return {"$schema": "http://json-schema.org/draft-07/schema#",
            "$comment": f"keda.sh/v1alpha1 {kind}, from {SOURCE} plus KEDA 2.12-2.16's "
                        "additions; written by derive_keda_schemas.py",
            **out}


def main(package: str) -> None:
    for kind, name in KINDS.items():
        target = HERE / "keda.sh" / name
        target.write_text(json.dumps(derive(Path(package), kind), indent=1, sort_keys=True)
                          + "\n")
        print(f"wrote {target}")


if __name__ == "__main__":
    main(sys.argv[1])
