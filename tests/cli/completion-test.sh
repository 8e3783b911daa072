#!/bin/sh
# packaging/dsactl.bash-completion: sources it in bash and calls _dsactl with COMP_WORDS /
# COMP_CWORD as bash would. Usage: completion-test.sh [DSACTL [SOURCE_DIR]]. With DSACTL, every
# verb and --option of `dsactl --help` must be offered somewhere, and model names are asked of a
# bus without dsad (quietly nothing). Exit 0 pass, 1 fail, 77 skipped (no bash-completion).
# shellcheck shell=bash
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"
set -u

dsactl=${1:-}
case $dsactl in "" | /*) ;; *) dsactl=$PWD/$dsactl ;; esac
src=${2:-$(cd "$(dirname "$0")/../.." && pwd)}
bc=/usr/share/bash-completion/bash_completion
if [ ! -r "$bc" ]; then
        echo "completion-test: SKIP: bash-completion is not installed ($bc)"
        exit 77
fi
# shellcheck disable=SC1090
. "$bc"
# shellcheck disable=SC1091
. "$src/packaging/dsactl.bash-completion"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0

# A dsactl that prints what `dsactl list` prints when dsad serves two models, and logs its bus.
cat >"$tmp/fake-dsactl" <<'EOF'
#!/bin/sh
echo "$*" >>"${0%/*}/fake-args"
[ "$1" = --bus ] && shift 2
[ "$1" = list ] || exit 1
printf '%-24s %-6s %-6s %6s %6s\n' NAME LOADED ARCH HIDDEN LABELS sst2 yes bert 256 2 minilm no bert 384 0
EOF
chmod +x "$tmp/fake-dsactl"
mkdir -p "$tmp/files/hf-model"
: >"$tmp/files/a.gguf"
: >"$tmp/files/b.gguf"
: >"$tmp/files/train.tsv"
: >"$tmp/files/notes.txt"

# complete_line LINE: what _dsactl offers for "dsactl LINE" (LINE ending in a space: a new
# word), one per line, sorted. COMP_WORDS is split as readline does: at blanks, and each run of
# COMP_WORDBREAKS characters ':' and '=' is a word of its own.
complete_line() {
        local line="dsactl $1" word="" c i
        COMP_WORDS=()
        for ((i = 0; i < ${#line}; i++)); do
                c=${line:i:1}
                case $c in
                " ")
                        [ -z "$word" ] || COMP_WORDS+=("$word")
                        word="" ;;
                ":" | "=")
                        if [[ -n $word && $word != *[:=] ]]; then
                                COMP_WORDS+=("$word")
                                word=""
                        fi
                        word+=$c ;;
                *)
                        if [[ $word == *[:=] ]]; then
                                COMP_WORDS+=("$word")
                                word=""
                        fi
                        word+=$c ;;
                esac
        done
        COMP_WORDS+=("$word") # "" after a blank: the new word
        COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
        COMP_LINE=$line
        COMP_POINT=${#line}
        COMPREPLY=()
        _dsactl dsactl "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD - 1]}"
        [ ${#COMPREPLY[@]} -eq 0 ] || printf '%s\n' "${COMPREPLY[@]}" | LC_ALL=C sort
}

# expect LINE WANT...: every WANT is offered.  expect_only LINE [WANT...]: exactly these.
expect() {
        local line=$1 got w
        shift
        got=$(complete_line "$line")
        for w in "$@"; do
                if ! printf '%s\n' "$got" | grep -qxF -- "$w"; then
                        echo "FAIL: dsactl $line<TAB>: no '$w' in: $(echo $got)"
                        fail=1
                        return
                fi
        done
        echo "ok: dsactl $line<TAB> offers $*"
}
expect_only() {
        local line=$1 got want=""
        shift
        got=$(complete_line "$line" | tr '\n' ' ')
        [ $# -eq 0 ] || want=$(printf '%s\n' "$@" | LC_ALL=C sort | tr '\n' ' ')
        if [ "$got" != "$want" ]; then
                echo "FAIL: dsactl $line<TAB>: got '$got', want '$want'"
                fail=1
                return
        fi
        echo "ok: dsactl $line<TAB> = ${*:-(nothing)}"
}

cd "$tmp/files" || exit 1

# Verbs and global options.
expect_only "" tokenize classify embed import bench eval optimize show train distill list ps status load unload policy
expect_only "cl" classify
expect_only "--" --help --version --bus
expect_only "--bus s" system session
expect_only "--bus session l" list load

# Options of verbs, option values.
expect "classify --" --model --json --threads --min-accuracy --max-latency --priority --bus --help
expect_only "classify --priority " high low normal
expect_only "embed --pool " cls mean none pooler
expect_only "eval --task " mrpc ppl rte sst2
expect_only "train --task " mrpc rte sst2
expect_only "optimize --quant " bf16 f16 f32 int8 mixed
expect_only "optimize --sparsity-pattern 2" 2:4
expect_only "optimize --sparsity-pattern 2:" 4
expect_only "embed --pool=me" mean
expect_only "optimize --attention l" linear local
expect_only "import --type " bf16 f16 f32
expect "distill --" --teacher --student --student-config --loss --fresh --qat --checkpoint-every
expect_only "distill --loss response,f" response,feature
expect "list --" --json --bus --help

# policy show|set and their keys.
expect_only "policy " set show
expect_only "policy set --" --bus --help --latency-target --min-accuracy --mode --power-budget
expect_only "policy show --" --bus --help --json
expect_only "policy set --mode " adaptive fixed:

# Files: GGUF files and folders for models and outputs, any file for data.
expect_only "import " a.gguf b.gguf hf-model
expect_only "optimize -o " a.gguf b.gguf hf-model
expect_only "eval -m a.gguf --data " a.gguf b.gguf hf-model notes.txt train.tsv
expect_only "bench --attention a.gguf,b" a.gguf,b.gguf

# Model names from dsad (the fake dsactl), on the bus of the command line, plus GGUF files.
# complete_line's words[0] is dsactl: the fake, through PATH.
PATH="$tmp:$PATH"
ln -s fake-dsactl "$tmp/dsactl"
expect_only "classify -m " a.gguf b.gguf hf-model minilm sst2
expect_only "load " minilm sst2
expect_only "load sst2 " # one NAME only
expect_only "--bus session unload s" sst2
if ! grep -qx -- "--bus session list" "$tmp/fake-args"; then
        echo "FAIL: model names were not asked on --bus session: $(cat "$tmp/fake-args")"
        fail=1
fi
rm -f "$tmp/dsactl"

# The real dsactl: nothing from a bus without dsad, quietly; every verb and option of its help.
if [ -n "$dsactl" ] && [ -x "$dsactl" ]; then
        ln -s "$dsactl" "$tmp/dsactl"
        err=$( { expect_only "--bus unix:path=$tmp/no-bus load " ; } 2>&1 >/dev/null)
        [ -z "$err" ] || { echo "FAIL: completion wrote to stderr: $err"; fail=1; }
        expect_only "--bus unix:path=$tmp/no-bus load "

        help=$("$dsactl" --help)
        verbs=$(printf '%s\n' "$help" | sed -n 's/^  \([a-z][a-z]*\) .*/\1/p' | sort -u)
        offered=$(complete_line ""; complete_line "--"
                  for v in $verbs; do complete_line "$v --"; complete_line "$v -"; done
                  complete_line "policy set --"; complete_line "policy show --")
        for w in $verbs $(printf '%s\n' "$help" | grep -o -- '--[a-z][a-z0-9-]*' | sort -u); do
                printf '%s\n' "$offered" | grep -qxF -- "$w" || { echo "FAIL: '$w' of dsactl --help is never offered"; fail=1; }
        done
        echo "ok: every verb and option of dsactl --help is offered ($(echo $verbs | wc -w) verbs)"
fi

if [ $fail -eq 0 ]; then
        echo "completion-test: PASS"
        exit 0
fi
echo "completion-test: FAIL"
exit 1
