"""The offline check of a Terraform module and its examples (run by
.ci/terraform-check, which provides python-hcl2).

`terraform validate` needs the providers, which cannot be downloaded here,
so this checks what can be checked without them:

- every .tf file parses (HCL syntax); so does every *.tfvars* file;
- the root module has versions.tf, variables.tf, outputs.tf and main.tf,
  and its terraform block names required_version and, in
  required_providers, the provider of every resource type it uses;
- every variable has a type and a description, every output a value and a
  description;
- every var.NAME is declared in its module, and every declared variable is
  used outside its own block;
- every reference to a google_*/random_* resource, data.TYPE.NAME,
  local.NAME and module.NAME points at a declaration in the module, and
  module.NAME.OUTPUT at an output of the module called (a local source);
- nothing is declared twice;
- a module block calling a local module passes every variable of it that
  has no default and no argument that it does not declare; a tfvars file
  sets only declared variables.

Usage: terraform_check.py MODULE_DIR. The modules checked are MODULE_DIR and
every MODULE_DIR/examples/*/ holding .tf files. Exit status 1 on any problem,
2 on a usage error.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import hcl2

NAME = r"[A-Za-z_][A-Za-z0-9_-]*"
# A reference starts a traversal: not after a letter, digit, `_` or `.`
# (so `data.google_x.y` is not also taken for the resource `google_x.y`).
START = r"(?<![A-Za-z0-9_.])"
VAR_REF = re.compile(START + rf"var\.({NAME})")
LOCAL_REF = re.compile(START + rf"local\.({NAME})")
MODULE_REF = re.compile(START + rf"module\.({NAME})(?:\.({NAME}))?")
DATA_REF = re.compile(START + rf"data\.({NAME})\.({NAME})")
RESOURCE_REF = re.compile(START + rf"((?:google|random)_[A-Za-z0-9_]+)\.({NAME})")

# Arguments of a module block that are Terraform's, not the module's.
MODULE_META_ARGS = {"source", "version", "providers", "count", "for_each", "depends_on"}
REQUIRED_ROOT_FILES = ("versions.tf", "variables.tf", "outputs.tf", "main.tf")
# Comments are not code: a reference named in one is no reference.
OPTIONS = hcl2.SerializationOptions(with_comments=False)


def parse(path: Path) -> dict:
    with path.open(encoding="utf-8") as f:
        return hcl2.load(f, serialization_options=OPTIONS)


def syntax_error(e: Exception) -> str:
    """A parse error's first sentence (where, and what was found), without
    the parser's list of every token it would have taken."""
    text = " ".join(str(e).split())
    text = text.split(" Expected one of", 1)[0].split(" Previous tokens", 1)[0]
    return text[:300] or type(e).__name__


def meta(key) -> bool:
    """python-hcl2's own keys (`__is_block__`, `__comments__`, …)."""
    return isinstance(key, str) and key.startswith("__") and key.endswith("__")


def unquote(label: str) -> str:
    """A block label as python-hcl2 gives it (`"name"`) without its quotes."""
    if len(label) >= 2 and label[0] == '"' and label[-1] == '"':
        return label[1:-1]
    return label


def interpolations(text: str) -> list[str]:
    """The `${…}` and `%{…}` parts of a quoted string or heredoc."""
    parts = []
    i = 0
    while True:
        starts = [p for p in (text.find("${", i), text.find("%{", i)) if p >= 0]
        if not starts:
            return parts
        start = min(starts)
        depth = 0
        j = start + 1
        while j < len(text):
            if text[j] == "{":
                depth += 1
            elif text[j] == "}":
                depth -= 1
                if depth == 0:
                    break
            j += 1
        parts.append(text[start + 2 : j])
        i = j + 1


def expression_text(value: str) -> str:
    """The part of a python-hcl2 value that holds references: all of an
    expression (`${…}`, or a bare word), only the interpolations of a
    quoted string or heredoc."""
    if value.startswith('"'):
        return "\n".join(interpolations(value))
    return value


@dataclass
class Ref:
    kind: str  # var, local, module, data, resource
    name: str  # NAME, or TYPE.NAME
    attr: str | None  # module.NAME.OUTPUT's OUTPUT
    where: str  # "FILE: BLOCK"
    in_variable: str | None  # the variable block it is in, if any


@dataclass
class Module:
    path: Path
    files: list[Path] = field(default_factory=list)
    variables: dict[str, dict] = field(default_factory=dict)
    outputs: dict[str, dict] = field(default_factory=dict)
    locals: set[str] = field(default_factory=set)
    resources: set[str] = field(default_factory=set)  # TYPE.NAME
    data: set[str] = field(default_factory=set)  # TYPE.NAME
    modules: dict[str, dict] = field(default_factory=dict)
    terraform: list[dict] = field(default_factory=list)
    refs: list[Ref] = field(default_factory=list)
    declared_in: dict[str, str] = field(default_factory=dict)  # "KIND NAME" -> file
    unparsed: list[Path] = field(default_factory=list)


class Checker:
    def __init__(self, root: Path):
        self.root = root
        self.problems: list[str] = []
        self.warnings: list[str] = []

    def fail(self, message: str) -> None:
        if message not in self.problems:
            self.problems.append(message)

    def rel(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.root.parent))
        except ValueError:
            return str(path)

    # -- reading ---------------------------------------------------------

    def load(self, directory: Path) -> Module:
        module = Module(directory)
        module.files = sorted(directory.glob("*.tf"))
        for file in module.files:
            try:
                body = parse(file)
            except Exception as e:  # noqa: BLE001 - any parse error is the file's
                self.fail(f"{self.rel(file)}: HCL syntax error: {syntax_error(e)}")
                module.unparsed.append(file)
                continue
            self.collect(module, file, body)
        return module

    def declare(self, module: Module, kind: str, name: str, file: Path) -> None:
        key = f"{kind} {name}"
        if key in module.declared_in:
            self.fail(f"{self.rel(file)}: {kind} `{name}` is declared twice (also in {module.declared_in[key]})")
        else:
            module.declared_in[key] = self.rel(file)

    def collect(self, module: Module, file: Path, body: dict) -> None:
        for block in body.get("variable", []):
            for label, content in block.items():
                if meta(label):
                    continue
                name = unquote(label)
                self.declare(module, "variable", name, file)
                module.variables[name] = content
                self.scan(module, content, f"{self.rel(file)}: variable {name}", in_variable=name)
        for block in body.get("output", []):
            for label, content in block.items():
                if meta(label):
                    continue
                name = unquote(label)
                self.declare(module, "output", name, file)
                module.outputs[name] = content
                self.scan(module, content, f"{self.rel(file)}: output {name}")
        for block in body.get("locals", []):
            for name, value in block.items():
                if meta(name):
                    continue
                self.declare(module, "local", name, file)
                module.locals.add(name)
                self.scan(module, value, f"{self.rel(file)}: local {name}")
        for kind, into in (("resource", module.resources), ("data", module.data)):
            for block in body.get(kind, []):
                for type_label, named in block.items():
                    if meta(type_label):
                        continue
                    for name_label, content in named.items():
                        if meta(name_label):
                            continue
                        name = f"{unquote(type_label)}.{unquote(name_label)}"
                        self.declare(module, kind, name, file)
                        into.add(name)
                        self.scan(module, content, f"{self.rel(file)}: {kind} {name}")
        for block in body.get("module", []):
            for label, content in block.items():
                if meta(label):
                    continue
                name = unquote(label)
                self.declare(module, "module", name, file)
                module.modules[name] = content
                self.scan(module, content, f"{self.rel(file)}: module {name}")
        for block in body.get("provider", []):
            for label, content in block.items():
                if meta(label):
                    continue
                self.scan(module, content, f"{self.rel(file)}: provider {unquote(label)}")
        for block in body.get("terraform", []):
            module.terraform.append(block)
        for block in body.get("check", []) + body.get("import", []) + body.get("moved", []):
            self.scan(module, block, f"{self.rel(file)}: block")

    def scan(self, module: Module, value, where: str, in_variable: str | None = None) -> None:
        """Records every reference in a value (strings, lists, maps, blocks)."""
        if isinstance(value, dict):
            for key, item in value.items():
                if meta(key):
                    continue
                if isinstance(key, str) and ("${" in key or "%{" in key):
                    self.scan(module, key, where, in_variable)
                self.scan(module, item, where, in_variable)
        elif isinstance(value, list):
            for item in value:
                self.scan(module, item, where, in_variable)
        elif isinstance(value, str):
            text = expression_text(value)
            for m in VAR_REF.finditer(text):
                module.refs.append(Ref("var", m.group(1), None, where, in_variable))
            for m in LOCAL_REF.finditer(text):
                module.refs.append(Ref("local", m.group(1), None, where, in_variable))
            for m in MODULE_REF.finditer(text):
                module.refs.append(Ref("module", m.group(1), m.group(2), where, in_variable))
            for m in DATA_REF.finditer(text):
                module.refs.append(Ref("data", f"{m.group(1)}.{m.group(2)}", None, where, in_variable))
            for m in RESOURCE_REF.finditer(text):
                module.refs.append(Ref("resource", f"{m.group(1)}.{m.group(2)}", None, where, in_variable))

    # -- checking --------------------------------------------------------

    def check_module(self, module: Module, is_root: bool, called: dict[Path, Module]) -> None:
        where = self.rel(module.path)
        if module.unparsed:
            # What the broken file declares is unknown: checking references
            # now would only repeat its syntax error many times over.
            self.warnings.append(f"{where}: cross-checks skipped until every file parses")
            return
        if is_root:
            for name in REQUIRED_ROOT_FILES:
                if not (module.path / name).is_file():
                    self.fail(f"{where}: the root module has no {name}")
            self.check_versions(module)

        for name, body in module.variables.items():
            for attr in ("type", "description"):
                if attr not in body or body[attr] in ("", '""'):
                    self.fail(f"{module.declared_in['variable ' + name]}: variable `{name}` has no {attr}")
        for name, body in module.outputs.items():
            for attr in ("value", "description"):
                if attr not in body or (attr == "description" and body[attr] in ("", '""')):
                    self.fail(f"{module.declared_in['output ' + name]}: output `{name}` has no {attr}")

        used = set()
        for ref in module.refs:
            if ref.kind == "var":
                if ref.name not in module.variables:
                    self.fail(f"{ref.where}: var.{ref.name} is not declared in {where}")
                if ref.in_variable != ref.name:
                    used.add(ref.name)
            elif ref.kind == "local" and ref.name not in module.locals:
                self.fail(f"{ref.where}: local.{ref.name} is not declared in {where}")
            elif ref.kind == "resource" and ref.name not in module.resources:
                self.fail(f"{ref.where}: resource {ref.name} is not declared in {where}")
            elif ref.kind == "data" and ref.name not in module.data:
                self.fail(f"{ref.where}: data.{ref.name} is not declared in {where}")
            elif ref.kind == "module":
                if ref.name not in module.modules:
                    self.fail(f"{ref.where}: module.{ref.name} is not declared in {where}")
                elif ref.attr is not None:
                    target = called.get(self.source_dir(module, ref.name) or Path("/nonexistent"))
                    if target is not None and not target.unparsed and ref.attr not in target.outputs:
                        self.fail(
                            f"{ref.where}: module.{ref.name}.{ref.attr}: the module has no output `{ref.attr}`"
                        )
        for name in module.variables:
            if name not in used:
                self.fail(f"{module.declared_in['variable ' + name]}: variable `{name}` is declared but never used")

        for name, body in module.modules.items():
            source_dir = self.source_dir(module, name)
            if source_dir is None:
                continue
            target = called.get(source_dir)
            if target is None:
                self.fail(f"{where}: module `{name}` calls {source_dir}, which has no .tf files")
                continue
            if target.unparsed:
                continue
            given = {k for k in body if not meta(k)} - MODULE_META_ARGS
            for var, var_body in target.variables.items():
                if "default" not in var_body and var not in given:
                    self.fail(f"{where}: module `{name}` does not pass `{var}`, which has no default")
            for arg in sorted(given - set(target.variables)):
                self.fail(f"{where}: module `{name}` passes `{arg}`, which {self.rel(source_dir)} does not declare")

        for tfvars in sorted(module.path.glob("*.tfvars*")):
            try:
                values = parse(tfvars)
            except Exception as e:  # noqa: BLE001
                self.fail(f"{self.rel(tfvars)}: HCL syntax error: {syntax_error(e)}")
                continue
            for key in values:
                if not meta(key) and key not in module.variables:
                    self.fail(f"{self.rel(tfvars)}: sets `{key}`, which {where} does not declare")

    def check_versions(self, module: Module) -> None:
        where = self.rel(module.path)
        if not module.terraform:
            self.fail(f"{where}: no terraform block (required_version, required_providers)")
            return
        required_version = any("required_version" in t for t in module.terraform)
        if not required_version:
            self.fail(f"{where}: the terraform block has no required_version")
        providers = set()
        for t in module.terraform:
            for block in t.get("required_providers", []):
                providers |= {k for k in block if not meta(k)}
        for name in sorted(module.resources | module.data):
            provider = name.split("_", 1)[0]
            if provider != "terraform" and provider not in providers:
                self.fail(f"{where}: {name} needs provider `{provider}`, which required_providers does not name")

    def source_dir(self, module: Module, name: str) -> Path | None:
        """The directory a module block calls, if its source is local."""
        source = unquote(str(module.modules[name].get("source", "")))
        if not (source.startswith("./") or source.startswith("../")):
            return None
        return (module.path / source).resolve()

    def run(self) -> int:
        if not any(self.root.glob("*.tf")):
            print(f"terraform-check: {self.root} holds no .tf files", file=sys.stderr)
            return 2
        directories = [self.root] + sorted(
            d for d in (self.root / "examples").glob("*/") if d.is_dir() and any(d.glob("*.tf"))
        )
        modules = {d.resolve(): self.load(d) for d in directories}
        for directory, module in modules.items():
            self.check_module(module, directory == self.root.resolve(), modules)

        for directory, module in modules.items():
            print(
                f"terraform-check: {self.rel(module.path)}: {len(module.files)} files, "
                f"{len(module.resources)} resources, {len(module.data)} data sources, "
                f"{len(module.variables)} variables, {len(module.outputs)} outputs, "
                f"{len(module.locals)} locals, {len(module.modules)} module calls, "
                f"{len(module.refs)} references checked"
            )
        for warning in self.warnings:
            print(f"terraform-check: note: {warning}", file=sys.stderr)
        if self.problems:
            for problem in self.problems:
                print(f"terraform-check: FAIL: {problem}", file=sys.stderr)
            print(f"terraform-check: {len(self.problems)} problem(s)", file=sys.stderr)
            return 1
        print("terraform-check: ok (parsed and cross-checked offline; not `terraform validate`)")
        return 0


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: terraform_check.py MODULE_DIR", file=sys.stderr)
        return 2
    root = Path(argv[1]).resolve()
    if not root.is_dir():
        print(f"terraform-check: {root} is not a directory", file=sys.stderr)
        return 2
    return Checker(root).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
