#!/usr/bin/env bash
# The transformers range memreg supports (pyproject.toml's ml extra), tested at both ends:
# a fresh virtual environment per release, the project installed against it, then the tests of
# everything that touches transformers' model and generation internals (compose, generate,
# assisted decoding, scoring, Hub ids, training's model builders).
#
#     bash bench/transformers_range.sh                 # oldest and newest of the declared range
#     bash bench/transformers_range.sh 4.51.3 5.0.0    # any releases
#
# Not part of `.ci/run` (two extra installs: ~5 minutes each on 2 cores); run it when bumping the range.
set -euo pipefail
cd "$(dirname "$0")/.."
OLDEST=$(python3 - <<'EOF'
import re, tomllib
ml = tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["ml"]
spec = next(d for d in ml if d.startswith("transformers"))
print(re.search(r">=\s*([0-9.]+)", spec).group(1))
EOF
)
VERSIONS=("${@:-$OLDEST}")
[ $# -eq 0 ] && VERSIONS=("$OLDEST" "newest")
TESTS=(tests/unit/test_compose.py tests/unit/test_compose_generate.py tests/unit/test_assisted.py
       tests/unit/test_compose_fit.py tests/unit/test_evaluate.py tests/unit/test_train_truncate.py
       tests/integration/test_hub_ids.py)
status=0
for v in "${VERSIONS[@]}"; do
    env=/tmp/memreg-transformers-$v
    rm -rf "$env" && python3 -m venv "$env"
    pin=$([ "$v" = newest ] && echo "transformers" || echo "transformers==$v")
    # torch pinned to the CPU wheel on disk; boto3 capped as in .ci/run
    "$env/bin/pip" install -q torch==2.13.0 -e ".[ml,s3,test]" "$pin" "boto3<1.43.118"
    got=$("$env/bin/python" -c "import transformers; print(transformers.__version__)")
    echo "== transformers $got"
    if "$env/bin/python" -m pytest -q -p no:cacheprovider "${TESTS[@]}"; then
        echo "== transformers $got: passed"
    else
        echo "== transformers $got: FAILED"
        status=1
    fi
done
exit $status
