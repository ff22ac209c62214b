#!/usr/bin/env bash
# Mirror a dataset tree into single-GOP MPEG-4 Part 2 streams that `coviar` reads.
#
#   reencode.sh [-j N] IN OUT
#
# - every video (.avi .mp4 .mov .mkv .m4v .webm .mpg .flv) becomes OUT/<same path>.mp4;
# - every folder holding image frames (.png .jpg .jpeg .bmp, e.g. a CK+ sequence) becomes
#   OUT/<folder>.mp4, frames in name order at 25 fps;
# - every other file (labels, XML metadata) is copied unchanged.
# Settings are the MIC reproduction's: -vf setsar=1:1 -q:v 1 -g 300 -c:v mpeg4 -f rawvideo (a raw
# MPEG-4 Part 2 stream whatever the extension says), plus: odd sizes padded to even (MPEG-4 needs
# them), no audio, and no scene-cut key frames, so that a clip of up to 300 frames is one GOP.
# Outputs newer than their input are skipped. ffmpeg: $FFMPEG, else the one of the pip package
# imageio-ffmpeg, else `ffmpeg` on PATH. Exits non-zero when anything failed.
set -euo pipefail

VIDEO_EXT="avi|mp4|mov|mkv|m4v|webm|mpg|flv"
IMAGE_EXT="png|jpg|jpeg|bmp"

usage() {
    echo "usage: $0 [-j N] IN OUT   (N parallel jobs, default: all cores)" >&2
    exit 2
}

find_ffmpeg() {
    if [[ -n "${FFMPEG:-}" ]]; then
        echo "$FFMPEG"
        return
    fi
    local here py exe
    here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
    for py in "$here/.venv/bin/python" python3; do
        if exe=$("$py" -c 'import imageio_ffmpeg; print(imageio_ffmpeg.get_ffmpeg_exe())' \
            2>/dev/null); then
            echo "$exe"
            return
        fi
    done
    command -v ffmpeg || {
        echo "reencode.sh: no ffmpeg found: pip install imageio-ffmpeg, or set FFMPEG" >&2
        exit 2
    }
}

# Record one outcome in RESULTS (status<TAB>dst<TAB>why) and print a progress line.
report() {
    local results=$1 status=$2 dst=$3 why=${4:-}
    printf '%s\t%s\t%s\n' "$status" "$dst" "$why" >>"$results"
    printf '[%d/%d] %-9s %s%s\n' "$(wc -l <"$results")" "$TOTAL" "$status" "${dst#"$OUT_ROOT"/}" \
        "${why:+ ($why)}"
}

# One job: KIND (video|frames|copy) SRC DST RESULTS.
one() {
    local kind=$1 src=$2 dst=$3 results=$4 newest tmp log size why=""
    if [[ $kind == frames ]]; then
        newest=$(find "$src" -maxdepth 1 -type f -regextype posix-extended \
            -iregex ".*\.($IMAGE_EXT)" -printf '%T@ %p\n' | sort -n | tail -n 1 | cut -d' ' -f2-)
    else
        newest=$src
    fi
    if [[ -e $dst && ! $newest -nt $dst ]]; then
        report "$results" skipped "$dst"
        return 0
    fi
    mkdir -p "$(dirname "$dst")"
    if [[ $kind == copy ]]; then
        if cp -p "$src" "$dst"; then report "$results" copied "$dst"; else
            report "$results" failed "$dst" "copy failed"; fi
        return 0
    fi
    tmp="$dst.part.$$"
    log=$(mktemp)
    local input=(-i "$src")
    if [[ $kind == frames ]]; then
        input=(-f image2pipe -framerate 25 -i -)
    fi
    if {
        if [[ $kind == frames ]]; then
            find "$src" -maxdepth 1 -type f -regextype posix-extended -iregex ".*\.($IMAGE_EXT)" \
                -print0 | LC_ALL=C sort -z | xargs -0 cat
        fi
    } | "$FFMPEG_BIN" -nostdin -hide_banner -y "${input[@]}" -an \
        -vf "setsar=1:1,pad=ceil(iw/2)*2:ceil(ih/2)*2" -q:v 1 -g 300 -sc_threshold 1000000000 \
        -c:v mpeg4 -f rawvideo "$tmp" >"$log" 2>&1 && [[ -s $tmp ]]; then
        mv -f "$tmp" "$dst"
        size=$(grep -m1 -oE 'Video: .*' "$log" | grep -oE ' [0-9]+x[0-9]+' | head -n 1 | tr -d ' ')
        if [[ -n $size ]] && (((${size%x*} % 2) || (${size#*x} % 2))); then
            why="odd size $size padded to even"
        fi
        report "$results" converted "$dst" "$why"
    else
        rm -f "$tmp"
        why=$(grep -iE 'error|invalid|no such|not|unknown' "$log" | tail -n 1 | tr '\t' ' ')
        report "$results" failed "$dst" "${why:-ffmpeg failed}"
    fi
    rm -f "$log"
}

if [[ ${1:-} == --one ]]; then
    shift
    one "$@"
    exit 0
fi

jobs=$(nproc 2>/dev/null || echo 2)
while getopts "j:h" opt; do
    case $opt in
    j) [[ $OPTARG =~ ^[1-9][0-9]*$ ]] || usage; jobs=$OPTARG ;;
    *) usage ;;
    esac
done
shift $((OPTIND - 1))
[[ $# -eq 2 ]] || usage
in=${1%/}
out=${2%/}
[[ -d $in ]] || { echo "reencode.sh: input folder '$in' does not exist" >&2; exit 2; }
mkdir -p "$out"
in=$(cd "$in" && pwd)
out=$(cd "$out" && pwd)
[[ $out != "$in" && $out != "$in"/* ]] || { echo "reencode.sh: OUT must lie outside IN" >&2; exit 2; }
FFMPEG_BIN=$(find_ffmpeg)
export FFMPEG_BIN VIDEO_EXT IMAGE_EXT
export -f one report

# The job list, NUL-separated triples: kind, source, destination.
list=$(mktemp)
results=$(mktemp)
trap 'rm -f "$list" "$results"' EXIT
while IFS= read -r -d '' dir; do
    rel=${dir#"$in"}
    if find "$dir" -maxdepth 1 -type f -regextype posix-extended -iregex ".*\.($IMAGE_EXT)" |
        grep -q .; then
        printf 'frames\0%s\0%s\0' "$dir" "$out$rel.mp4" >>"$list"
    fi
    while IFS= read -r -d '' f; do
        name=${f##*/}
        if [[ ${name,,} =~ \.($VIDEO_EXT)$ ]]; then
            dst="$out${f#"$in"}"
            printf 'video\0%s\0%s\0' "$f" "${dst%.*}.mp4" >>"$list"
        elif [[ ! ${name,,} =~ \.($IMAGE_EXT)$ ]]; then
            printf 'copy\0%s\0%s\0' "$f" "$out${f#"$in"}" >>"$list"
        fi
    done < <(find "$dir" -maxdepth 1 -type f -print0)
done < <(find "$in" -type d -print0)

TOTAL=$(tr -cd '\0' <"$list" | wc -c)
TOTAL=$((TOTAL / 3))
OUT_ROOT=$out
export TOTAL OUT_ROOT
echo "reencode.sh: $TOTAL items from $in to $out with $jobs jobs ($FFMPEG_BIN)"
if ((TOTAL > 0)); then
    xargs -0 -n 3 -P "$jobs" bash -c 'one "$1" "$2" "$3" "$0"' "$results" <"$list" ||
        true # failures are in $results
fi
for status in converted copied skipped failed; do
    printf '%s %d\n' "$status" "$(cut -f1 "$results" | grep -cx "$status" || true)"
done | paste -sd' ' | sed 's/^/reencode.sh: /'
if grep -q "^failed" "$results"; then
    echo "reencode.sh: failed:" >&2
    grep "^failed" "$results" | cut -f2- | sed 's/\t/: /; s/^/  /' >&2
    exit 1
fi
