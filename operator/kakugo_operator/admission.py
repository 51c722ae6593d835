"""The admission decision, pure: is an object valid, what would it make the operator do on
its author's behalf, and may its author do that herself (README, "Trust model").

The operator runs stage Jobs and teacher servers with what a spec names: Secrets (the
teacher endpoint's API key, a Hugging Face token, S3 credentials), a PVC, a server image
and the server's arguments. It never reads a Secret itself, which is exactly why it must
not act for a user who could not: otherwise anyone who may create a LanguageModel could
send any Secret of the namespace to a server of her choosing. So the webhook
(`webhook.py`) asks the API server, with a SubjectAccessReview for the requesting user,
whether she may `get` every Secret and PVC the object names; images and server arguments
outside the operator's allowlist are allowed only to users who may create Pods in the
namespace (they could run them anyway).

This module decides; `webhook.py` asks the API server the `Question`s and serves it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from kakugo_operator import fleet as fleet_mod
from kakugo_operator.reconcile import Observed, parse_spec
from kakugo_operator.settings import OperatorSettings
from kakugo_stages.contract import ManifestError, validate_spec

#: The kinds the webhook reviews, by plural.
KINDS = {
    "languagemodels": "LanguageModel",
    "teachers": "Teacher",
    "languagefleets": "LanguageFleet",
}

#: secret/pvc: `get` it; image/args: the allowlist or `create pods`; pods: `create pods`
#: (what only a Pod's author could choose: volumes, a ServiceAccount, a RuntimeClass);
#: claims: `create persistentvolumeclaims` (the operator's Pods would make PVCs); new-pvc:
#: the same (the operator would make a Teacher's model-cache PVC).
What = Literal["secret", "pvc", "new-pvc", "image", "args", "pods", "claims"]

#: Where a Teacher spec (and so `teacher.serve` of a LanguageModel) names something the
#: operator uses for its author: (path to the field, key of the name inside it, what).
SERVER_FIELDS: tuple[tuple[tuple[str, ...], str | None, What], ...] = (
    (("hfTokenSecretRef",), "name", "secret"),
    (("image",), None, "image"),
    (("extraArgs",), None, "args"),
    # The server's API key (in its environment; the stages that use it get it too).
    (("apiKeySecretRef",), "name", "secret"),
    # The model cache: an existing PVC mounted into the server, or a new one the operator
    # creates (`new-pvc`: a modelCache without a claimName).
    (("modelCache", "claimName"), None, "pvc"),
    (("modelCache",), None, "new-pvc"),
)
#: The same for a LanguageModel spec (and a LanguageFleet's template and overrides).
LANGUAGE_MODEL_FIELDS: tuple[tuple[tuple[str, ...], str | None, What], ...] = (
    (("teacher", "endpoint", "apiKeySecretRef"), "name", "secret"),
    *((("teacher", "serve", *path), key, what) for path, key, what in SERVER_FIELDS),
    # The served model's server (spec.serve): its image, arguments and API key.
    (("serve", "image"), None, "image"),
    (("serve", "extraArgs"), None, "args"),
    (("serve", "apiKeySecretRef"), "name", "secret"),
    (("storage", "s3", "credentialsSecretRef"), None, "secret"),
    (("storage", "pvc", "claimName"), None, "pvc"),
    (("huggingFace", "tokenSecretRef"), "name", "secret"),
    (("publish", "huggingFace", "tokenSecretRef"), "name", "secret"),
    (("resources", "scratch", "claimName"), None, "pvc"),
    (("resources", "scratch", "storageClassName"), None, "claims"),
)


@dataclass(frozen=True)
class Use:
    """Something an object makes the operator use: `field` is where it is written
    (`spec.teacher.endpoint.apiKeySecretRef`), `value` a name, an image or arguments."""

    field: str
    what: What
    value: str | tuple[str, ...]


@dataclass(frozen=True)
class Question:
    """One SubjectAccessReview: may the user `verb` the `resource` (core group) named
    `name` (any, when None) in the object's namespace?"""

    verb: str
    resource: str
    name: str | None = None

    def attributes(self, namespace: str) -> dict[str, str]:
        """`spec.resourceAttributes` of the review."""
        attrs = {"namespace": namespace, "verb": self.verb, "group": "", "resource": self.resource}
        if self.name:
            attrs["name"] = self.name
        return attrs


CREATE_PODS = Question("create", "pods")
CREATE_CLAIMS = Question("create", "persistentvolumeclaims")


@dataclass(frozen=True)
class Allowlist:
    """What needs no permission beyond creating the object: the operator's own images
    (`images`) and `allowedImages`; the server arguments of `allowedExtraArgs`."""

    images: tuple[str, ...]
    extra_args: tuple[str, ...]

    @classmethod
    def of(cls, settings: OperatorSettings) -> Allowlist:
        own = tuple(dict.fromkeys(settings.images.values()))
        return cls(own + tuple(settings.allowed_images), tuple(settings.allowed_extra_args))

    def image_allowed(self, image: str) -> bool:
        """An exact reference, or a prefix for entries ending in `*`."""
        return any(
            image == entry or (entry.endswith("*") and image.startswith(entry[:-1]))
            for entry in self.images
        )

    def refused_args(self, args: Sequence[str]) -> list[str]:
        """The arguments outside the allowlist. A flag is allowed by its name (`--a=b` is
        `--a`, underscores read as dashes, as vLLM's parser does); the values after a flag
        go with it; a value before any flag (a positional argument) is refused."""
        allowed = {_flag(a) for a in self.extra_args}
        refused: list[str] = []
        current: bool | None = None  # the flag the values belong to: allowed or not
        for arg in args:
            if arg.startswith("-"):
                current = _flag(arg) in allowed
                if not current:
                    refused.append(arg)
            elif current is None:
                refused.append(arg)
        return refused


def _flag(arg: str) -> str:
    name = arg.split("=", 1)[0]
    dashes = len(name) - len(name.lstrip("-"))
    return name[:dashes] + name[dashes:].replace("_", "-")


# ------------------------------------------------------------------ validation


def _observed(name: str, namespace: str, spec: Any) -> Observed:
    return Observed(
        name=name,
        namespace=namespace,
        generation=1,
        spec=dict(spec) if isinstance(spec, Mapping) else spec,
        status={},
        jobs=[],
        pods=[],
        teacher=None,
        now=datetime.now(UTC),
    )


def validation_errors(
    kind: str, name: str, namespace: str, spec: Any, settings: OperatorSettings
) -> list[str]:
    """What the operator would report as `Stalled/InvalidSpec` (the validation of
    `kakugo validate`, with the same field paths), as messages; empty when valid.
    A LanguageFleet is valid when every member is (`fleet.expand`, as its status lists
    them in `invalidLanguages`)."""
    if kind == "LanguageModel":
        parsed = parse_spec(_observed(name, namespace, spec), settings)
        return [parsed] if isinstance(parsed, str) else []
    try:
        model = validate_spec(kind, spec, f"{namespace}/{name}")
    except ManifestError as exc:
        return [str(e) for e in exc.errors]
    if kind != "LanguageFleet":
        return []
    errors: list[str] = []
    for member in fleet_mod.expand(model, fleet_name=name):
        errors.extend(member.errors)
        if member.body is not None:
            parsed = parse_spec(_observed(member.name or name, namespace, member.body), settings)
            if isinstance(parsed, str):
                errors.append(f"spec.languages[{member.index}] ({member.language}): {parsed}")
    return errors


# ------------------------------------------------------------------ what an object uses


def _at(obj: Any, path: Iterable[str]) -> Any:
    for part in path:
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(part)
    return obj


def _walk(
    spec: Any, fields: tuple[tuple[tuple[str, ...], str | None, What], ...], prefix: str
) -> Iterator[Use]:
    for path, key, what in fields:
        value = _at(spec, path)
        if key is not None:
            value = _at(value, (key,))
        where = ".".join((prefix, *path))
        if what == "args":
            if isinstance(value, list) and value:
                yield Use(where, what, tuple(str(v) for v in value))
        elif what == "new-pvc":
            if isinstance(value, Mapping) and not value.get("claimName"):
                yield Use(where, what, str(value.get("storageClassName") or ""))
        elif isinstance(value, str) and value:
            yield Use(where, what, value)


def _items(value: Any) -> list[tuple[int, Any]]:
    return list(enumerate(value)) if isinstance(value, list) else []


def template_uses(template: Any, prefix: str) -> Iterator[Use]:
    """What a pod template (`resources.podTemplates[i]`, a Teacher's `podTemplate`) makes
    the operator's Pods use: volumes, a ServiceAccount and a RuntimeClass (only a Pod's
    author could choose them), the Secrets and PVCs they name, pull Secrets, Secret keys in
    env, another image."""
    spec = _at(template, ("spec",))
    if not isinstance(spec, Mapping):
        return
    where = f"{prefix}.spec"
    for key in ("serviceAccountName", "runtimeClassName"):
        if isinstance(spec.get(key), str) and spec[key]:
            yield Use(f"{where}.{key}", "pods", spec[key])
    for i, volume in _items(spec.get("volumes")):
        at = f"{where}.volumes[{i}]"
        yield Use(at, "pods", str(_at(volume, ("name",)) or ""))
        if secret := _at(volume, ("secret", "secretName")):
            yield Use(f"{at}.secret.secretName", "secret", str(secret))
        if claim := _at(volume, ("persistentVolumeClaim", "claimName")):
            yield Use(f"{at}.persistentVolumeClaim.claimName", "pvc", str(claim))
        if _at(volume, ("ephemeral",)) is not None:
            yield Use(f"{at}.ephemeral", "claims", str(_at(volume, ("name",)) or ""))
    for i, ref in _items(spec.get("imagePullSecrets")):
        if name := _at(ref, ("name",)):
            yield Use(f"{where}.imagePullSecrets[{i}].name", "secret", str(name))
    for j, container in _items(spec.get("containers")):
        at = f"{where}.containers[{j}]"
        if isinstance(image := _at(container, ("image",)), str) and image:
            yield Use(f"{at}.image", "image", image)
        for k, var in _items(_at(container, ("env",))):
            if name := _at(var, ("valueFrom", "secretKeyRef", "name")):
                yield Use(f"{at}.env[{k}].valueFrom.secretKeyRef", "secret", str(name))


def _language_model_uses(spec: Any, prefix: str) -> Iterator[Use]:
    yield from _walk(spec, LANGUAGE_MODEL_FIELDS, prefix)
    for i, template in _items(_at(spec, ("resources", "podTemplates"))):
        yield from template_uses(template, f"{prefix}.resources.podTemplates[{i}]")


def uses(kind: str, spec: Any) -> list[Use]:
    """Everything the object makes the operator use for its author, where it is written.
    A fleet's members are made of its template and their overrides (merge patches), so
    every value of a member is written in one of them: both are walked."""
    if kind == "LanguageModel":
        return list(_language_model_uses(spec, "spec"))
    if kind == "Teacher":
        out = list(_walk(spec, SERVER_FIELDS, "spec"))
        return out + list(template_uses(_at(spec, ("podTemplate",)), "spec.podTemplate"))
    out = list(_language_model_uses(_at(spec, ("template",)), "spec.template"))
    for i, entry in enumerate(_at(spec, ("languages",)) or []):
        overrides = _at(entry, ("overrides",))
        out += _language_model_uses(overrides, f"spec.languages[{i}].overrides")
    return out


def questions(found: Sequence[Use], allow: Allowlist) -> list[Question]:
    """The reviews to ask, each once: `get` on every Secret and PVC; `create pods` when
    an image or an argument is outside the allowlist."""
    out: list[Question] = []
    for use in found:
        if use.what == "secret":
            out.append(Question("get", "secrets", str(use.value)))
        elif use.what == "pvc":
            out.append(Question("get", "persistentvolumeclaims", str(use.value)))
        elif use.what in ("claims", "new-pvc"):
            out.append(CREATE_CLAIMS)
        elif (
            use.what == "pods"
            or (use.what == "image" and not allow.image_allowed(str(use.value)))
            or (use.what == "args" and allow.refused_args(use.value))
        ):
            out.append(CREATE_PODS)
    return list(dict.fromkeys(out))


# ------------------------------------------------------------------ the answer


def cannot(user: str, question: Question, namespace: str) -> str:
    """The API server's own words for a refusal."""
    return (
        f'User "{user}" cannot {question.verb} resource "{question.resource}" in API group "" '
        f'in the namespace "{namespace}"'
    )


def _listed(items: Sequence[str], limit: int = 6) -> str:
    if not items:
        return "none"
    shown = ", ".join(items[:limit])
    return shown + (f", … ({len(items) - limit} more)" if len(items) > limit else "")


def problems(
    found: Sequence[Use],
    answers: Mapping[Question, bool],
    user: str,
    namespace: str,
    allow: Allowlist,
) -> list[str]:
    """One message per use the user may not make, naming the field and the missing
    permission; empty when everything is allowed. A question without an answer counts
    as refused."""
    out: list[str] = []
    for use in found:
        if use.what == "secret":
            q = Question("get", "secrets", str(use.value))
            if not answers.get(q, False):
                out.append(
                    f'{use.field}: {cannot(user, q, namespace)} (Secret "{use.value}"): the '
                    "operator would hand this Secret to the pipeline for you, so you must be "
                    "allowed to read it yourself"
                )
        elif use.what == "pvc":
            q = Question("get", "persistentvolumeclaims", str(use.value))
            if not answers.get(q, False):
                out.append(
                    f"{use.field}: {cannot(user, q, namespace)} (PersistentVolumeClaim "
                    f'"{use.value}"): the {_mounted_by(use.field)} would mount it for you, so '
                    "you must be allowed to read it yourself"
                )
        elif use.what == "new-pvc":
            if not answers.get(CREATE_CLAIMS, False):
                out.append(
                    f"{use.field}: {cannot(user, CREATE_CLAIMS, namespace)}: the operator would "
                    "create the model cache's PersistentVolumeClaim for you; name an existing "
                    "one in claimName, or ask for the right to create claims"
                )
        elif use.what == "claims":
            if not answers.get(CREATE_CLAIMS, False):
                out.append(
                    f"{use.field}: {cannot(user, CREATE_CLAIMS, namespace)}: the operator's "
                    "Pods would make PersistentVolumeClaims for you, so you must be allowed "
                    "to create them yourself"
                )
        elif answers.get(CREATE_PODS, False):
            continue
        elif use.what == "pods":
            out.append(
                f"{use.field}: {cannot(user, CREATE_PODS, namespace)}: only users who may "
                "create Pods may give the operator's Pods volumes, a ServiceAccount or a "
                "RuntimeClass"
            )
        elif use.what == "image" and not allow.image_allowed(str(use.value)):
            out.append(
                f'{use.field}: image "{use.value}" is not allowed (operator setting '
                f"allowedImages and the operator's own images: {_listed(allow.images)}) and "
                f"{cannot(user, CREATE_PODS, namespace)}: only users who may create Pods may "
                "run other images"
            )
        elif use.what == "args" and (refused := allow.refused_args(use.value)):
            out.append(
                f"{use.field}: server argument(s) {', '.join(repr(a) for a in refused)} not "
                f"allowed (operator setting allowedExtraArgs: {_listed(allow.extra_args)}) and "
                f"{cannot(user, CREATE_PODS, namespace)}: only users who may create Pods may "
                "pass other arguments"
            )
    return out


def _mounted_by(field: str) -> str:
    return "teacher server" if "modelCache" in field else "stage Pods"


def spec_changed(old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> bool:
    """An update that changes the spec (a finalizer, a label, an annotation do not:
    Kopf's, the garbage collector's and the fleet's admission writes pass unchecked)."""
    return (old or {}).get("spec") != (new or {}).get("spec")
