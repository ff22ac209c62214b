#!/usr/bin/env bash
# Mirror a dataset tree into single-GOP MPEG-4 Part 2 streams that `coviar` reads.
#
#   reencode.sh [-j N] IN OUT
#
# - every video (.avi .mp4 .mov .mkv .m4v .webm .mpg .flv) becomes OUT/<same path>.mp4;
# - every folder holding image frames (.png .jpg .jpeg .bmp in any case, mixed formats allowed,
#   e.g. a CK+ sequence or a DFEW clip_224x224 folder) becomes OUT/<folder>.mp4: frames in name
#   order (numbers compare as numbers: 2 before 10) at 25 fps, every frame scaled to the size of
#   the first one if sizes differ (and said so);
# - every other file (labels, XML metadata) is copied unchanged.
# Symbolic links are followed (IN itself may be one); a loop, a broken link, a special file or OUT
# reached through a link is listed as ignored with the reason. Settings: -vf setsar=1:1 -q:v 1
# -c:v mpeg4 -f rawvideo (a raw MPEG-4 Part 2 stream whatever the extension says), odd sizes padded
# to even (MPEG-4 needs them), no audio, and one GOP per clip however long: -g INT_MAX, which the
# mpeg4 encoder takes only with -strict:v experimental (else it caps -g at 600), and no scene-cut
# key frames. The encoder runs one thread (-threads 1): it cuts each frame into one slice per
# thread, so by default its bytes would depend on the machine's cores.
# Every output is written to <output>.part.<PID> and renamed when complete, so an interrupted run
# never leaves a partial output under the final name; the next run removes such leftovers (only
# <an output it writes>.part.<PID of a dead process>). OUT/.reencode.sources records what each
# output was made from (per input file: size, mtime, first and last 64 KiB); an output whose
# input and itself are unchanged is skipped, any other is made again. A decode error in ffmpeg's
# log fails the clip. IN and OUT must not lie inside one another. Ctrl-C / SIGTERM stop every
# job, print what was done and exit 130 / 143. ffmpeg: $FFMPEG, else the one of the pip package
# imageio-ffmpeg as seen by $PYTHON, by .venv/bin/python beside this script or by python3, else
# `ffmpeg` on PATH.
# Exit status: 0 done, 1 something failed (each failure named), 2 wrong usage or nothing found.
set -euo pipefail

VIDEO_EXT="avi|mp4|mov|mkv|m4v|webm|mpg|flv"
IMAGE_EXT="png|jpg|jpeg|bmp"

usage() {
    echo "usage: $0 [-j N] IN OUT   (N parallel jobs, default: all cores)" >&2
    exit 2
}

find_ffmpeg() {
    if [[ -n ${FFMPEG:-} ]]; then
        command -v -- "$FFMPEG" || {
            echo "reencode.sh: FFMPEG=$FFMPEG is not an executable" >&2
            exit 2
        }
        return
    fi
    local here py exe
    here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
    for py in ${PYTHON:+"$PYTHON"} "$here/.venv/bin/python" python3; do
        if exe=$("$py" -c 'import imageio_ffmpeg; print(imageio_ffmpeg.get_ffmpeg_exe())' \
            2>/dev/null); then
            echo "$exe"
            return
        fi
    done
    command -v ffmpeg || {
        echo "reencode.sh: no ffmpeg found (asked \$PYTHON${PYTHON:+=$PYTHON}, $here/.venv/bin/python" \
            "and python3 for imageio_ffmpeg, then PATH): pip install imageio-ffmpeg, or set" \
            "FFMPEG=/path/to/ffmpeg or PYTHON=/path/to/python-with-imageio-ffmpeg" >&2
        exit 2
    }
}

# Record one outcome in $RESULTS (status<TAB>path<TAB>why) and print a progress line; line breaks
# and tabs in names are written \n and \t, so that every outcome is one line.
report() {
    local status=$1 path=$2 why=${3:-} rel n
    rel=${path#"$OUT_ROOT"/}
    rel=${rel#"$IN_ROOT"/}
    path=${path//$'\n'/\\n} rel=${rel//$'\n'/\\n} why=${why//$'\n'/\\n}
    path=${path//$'\t'/\\t} rel=${rel//$'\t'/\\t} why=${why//$'\t'/\\t}
    {
        flock 9 2>/dev/null || true # numbers the lines in order where flock(1) is installed
        printf '%s\t%s\t%s\n' "$status" "$path" "$why" >>"$RESULTS"
        n=$(wc -l <"$RESULTS")
    } 9>>"$RESULTS.lock"
    printf '[%d/%d] %-9s %s%s\n' "$n" "$TOTAL" "$status" "$rel" "${why:+ ($why)}"
}

# The frame size WxH of the video stream in ffmpeg's log $1: the input stream that "Stream
# mapping" sends to the output (else the first video stream, for a log of `ffmpeg -i` alone),
# read from its "Video:" line as the token NxM followed by "," or a blank, so that a codec tag
# such as "(avc1 / 0x31637661)" is never taken for a size. The log may carry ffmpeg's "[info] ".
stream_size() {
    local spec='[0-9]+:[0-9]+' line
    if line=$(grep -m1 -oE 'Stream #[0-9]+:[0-9]+ -> #0:0' "$1"); then
        spec=${line#Stream #}
        spec=${spec%% *}
    fi
    line=$(grep -m1 -E "^(\[info\] )? *Stream #$spec([[(][^:]*)?: Video: " "$1") || return 1
    [[ $line =~ [[:space:]]([1-9][0-9]*x[1-9][0-9]*)(,|[[:space:]]|$) ]] || return 1
    echo "${BASH_REMATCH[1]}"
}

# "odd size WxH padded to even" when WxH ($1) is odd.
odd_note() {
    local w=${1%x*} h=${1#*x}
    if ((w % 2 || h % 2)); then echo "odd size $1 padded to even"; fi
}

# What went wrong, from ffmpeg's log $1 (written with -loglevel level+info): "no space left on
# device" where an error says so, else the first error (the cause: the errors after it, such as
# "Nothing was written into output file", are its consequences) without addresses, e.g.
# "[mpeg4] dimensions too large for MPEG-4"; nothing when the log holds no error.
ffmpeg_error() {
    local errors
    errors=$(grep -E '\[(error|fatal|panic)\] ' "$1" | grep -v 'Parsed_showinfo') || return 0
    if grep -qi 'no space left on device' <<<"$errors"; then
        echo "no space left on device"
        return
    fi
    head -n 1 <<<"$errors" | tr '\t' ' ' |
        sed -E 's/ @ 0x[0-9a-fA-F]+\]/]/g; s/(^| )\[(error|fatal|panic)\] /\1/'
}

# ffmpeg with each log line tagged with its level ("[error] "), for ffmpeg_error.
run_ffmpeg() {
    "$FFMPEG_BIN" -nostdin -hide_banner -loglevel level+info "$@"
}

# Encode the inputs given as arguments (and their filters) into $tmp with the MIC settings.
encode() {
    run_ffmpeg -y "$@" -an -sn -dn -threads 1 -q:v 1 -g 2147483647 \
        -strict:v experimental -sc_threshold 1000000000 -c:v mpeg4 -f rawvideo "$tmp"
}

PAD="pad=ceil(iw/2)*2:ceil(ih/2)*2"

# The frames of folder $1 (NUL-separated, in name order, numbers compared as numbers).
list_frames() {
    find -L "$1" -mindepth 1 -maxdepth 1 -type f -regextype posix-extended \
        -iregex ".*\.($IMAGE_EXT)" -print0 | LC_ALL=C sort -zV
}

# Encode the video $src into $tmp; set `note`, or `why` on failure (return 1).
encode_video() {
    if ! encode -i "$src" -vf "setsar=1:1,$PAD" >"$log" 2>&1; then
        why=$(ffmpeg_error "$log")
        return 1
    fi
    log_clean || return 1
    if size=$(stream_size "$log"); then note=$(odd_note "$size"); fi
}

# Encode the frame folder $src into $tmp; set `note`, or `why` on failure (return 1).
# Each run of frames of one format is one concat-demuxer input (a list file, 1/25 s per frame;
# a decoder reads one format only); the runs are joined by the concat filter. Every frame is
# scaled to the first frame's size: with -reinit_filter 0 a size change inside a run goes through
# `scale` set up on the first frame; with several runs that size is read first (ffmpeg -i).
# showinfo logs each decoded frame, which is counted against the files and gives the sizes.
# The lists name the frames through a link to the folder (a list is read line by line, and the
# folder's name may hold a line break).
encode_frames() {
    local -a frames inputs
    local f ext fmt prev="" k=-1 i list scale="scale=iw:ih" size graph="" labels="" decoded
    local encoded sizes dir="$RUN_TMP/frames.$BASHPID.dir" err
    mapfile -d '' frames < <(list_frames "$src")
    ln -s -- "$src" "$dir"
    for f in "${frames[@]}"; do
        if [[ ${f##*/} == *$'\n'* ]]; then
            why="a frame name holds a line break: ${f##*/}"
            return 1
        fi
        ext=${f##*.}
        case ${ext,,} in
        png | bmp) fmt=${ext,,} ;;
        *) fmt=jpeg ;;
        esac
        if [[ $fmt != "$prev" ]]; then
            k=$((k + 1))
            list="$RUN_TMP/frames.$BASHPID.$k"
            : >"$list"
            inputs+=(-reinit_filter 0 -f concat -safe 0 -i "$list")
            prev=$fmt
        fi
        # concat's list syntax: within '...' only ' needs escaping, written '\''.
        f="$dir/${f##*/}"
        printf "file '%s'\nduration 0.04\n" "${f//\'/\'\\\'\'}" >>"$list"
    done
    if ((k > 0)); then
        run_ffmpeg -f image2 -pattern_type none -i "${frames[0]}" >"$log" 2>&1 || true
        if ! size=$(stream_size "$log"); then
            why="cannot read ${frames[0]##*/}: $(ffmpeg_error "$log")"
            return 1
        fi
        scale="scale=${size/x/:}"
    fi
    for ((i = 0; i <= k; i++)); do
        graph+="[$i:v]showinfo,$scale,setsar=1:1[v$i];"
        labels+="[v$i]"
    done
    graph+="${labels}concat=n=$((k + 1)):v=1:a=0,settb=1/25,setpts=N,${PAD}[v]"
    if ! encode "${inputs[@]}" -filter_complex "$graph" -map "[v]" -r 25 >"$log" 2>&1; then
        why=$(ffmpeg_error "$log")
        return 1
    fi
    decoded=$(grep -cE 'Parsed_showinfo_[0-9]+ @ [^]]*\] (\[info\] )?n: *[0-9]+ ' "$log")
    encoded=$(grep -oE 'frame= *[0-9]+' "$log" | tail -n 1 | grep -oE '[0-9]+')
    if [[ $decoded != "${#frames[@]}" || $encoded != "${#frames[@]}" ]]; then
        err=$(ffmpeg_error "$log")
        why="read $decoded and wrote ${encoded:-0} of ${#frames[@]} frames${err:+: $err}"
        return 1
    fi
    log_clean || return 1
    size=$(grep -m1 -E 'Parsed_showinfo_0 @ [^]]*\] (\[info\] )?n: *0 ' "$log" |
        grep -oE ' s:[0-9]+x[0-9]+')
    size=${size# s:}
    sizes=$(grep -oE ' s:[0-9]+x[0-9]+ ' "$log" | grep -oE '[0-9]+x[0-9]+' | sort -u | paste -sd' ')
    if [[ $sizes == *" "* ]]; then
        note="frame sizes differ (${sizes// /, }): scaled to the first one, $size"
    fi
    size=$(odd_note "$size")
    note="${note:+$note; }$size"
}

# A successful ffmpeg run whose log $log holds an error (a frame cut short decodes, grey below
# the cut, with "overread"): set `why` and fail.
log_clean() {
    why=$(ffmpeg_error "$log")
    [[ -z $why ]] || { why="error in ffmpeg's log: $why"; return 1; }
}

# What $src is as one md5: its path under IN and, for each file its output is made from (the
# video, the file copied, or every frame in order), its name, size, mtime (ns) and its first and
# last 64 KiB (a fast hash: a clip copied over another with `cp -p` differs however old it is).
made_of() {
    local -a files=("$src")
    if [[ $kind == frames ]]; then mapfile -d '' files < <(list_frames "$src"); fi
    {
        printf '%s\0' "${src#"$IN_ROOT"}" "${files[@]##*/}"
        stat -L -c '%s %.9Y' -- "${files[@]}"
        head -q -c 65536 -- "${files[@]}"
        tail -q -c 65536 -- "${files[@]}"
    } 2>/dev/null | md5sum | cut -d' ' -f1
}

# The size and mtime (ns) of $dst.
stamp() {
    stat -c '%s %.9Y' -- "$dst" 2>/dev/null
}

# Whether $dst is unchanged since it was made from $src as it is now ($sig), as OUT's record says.
up_to_date() {
    [[ -e $dst && -n ${MADE_FROM[$dst]:-} && ${MADE_FROM[$dst]} == "$sig $(stamp)" ]]
}

# Add to OUT's record that $dst was made from $sig (a later line of a destination wins).
record() {
    local now
    now=$(stamp) || return 0
    {
        flock 9 2>/dev/null || true
        printf '%s %s\t%s\0' "$sig" "$now" "${dst#"$OUT_ROOT"/}" >>"$MANIFEST"
    } 9>>"$RESULTS.lock"
}

# One job: KIND (video|frames|copy) SRC DST. Runs in a background subshell; its output goes to
# DST.part.<its PID> and is renamed to DST when complete.
one() {
    set +e
    local kind=$1 src=$2 dst=$3 tmp log note="" why="" size sig
    sig=$(made_of)
    if up_to_date; then
        trap '' TERM
        report skipped "$dst"
        return 0
    fi
    mkdir -p -- "$(dirname -- "$dst")"
    tmp="$dst.part.$BASHPID"
    log="$RUN_TMP/log.$BASHPID"
    case $kind in
    copy) cp -p -- "$src" "$tmp" 2>"$log" || why="copy failed: $(tail -n 1 "$log")" ;;
    *) "encode_$kind" || why=${why:-ffmpeg failed} ;;
    esac
    trap '' TERM # the rest is quick: an interrupt waits for the rename and the report
    if [[ -z $why ]] && [[ $kind == copy || -s $tmp ]] && mv -f -- "$tmp" "$dst"; then
        record
        if [[ $kind == copy ]]; then report copied "$dst"; else report converted "$dst" "$note"; fi
    else
        rm -f -- "$tmp"
        report failed "$dst" "${why:-could not rename $tmp}"
    fi
    rm -f -- "$log" "$RUN_TMP/frames.$BASHPID".*
}

# Whether process $1 is running. A finished process that nobody has reaped yet (a zombie: some
# init processes never reap) does not count.
running() {
    local rest
    [[ -d /proc/self ]] || { kill -0 "$1" 2>/dev/null; return; }
    read -r rest 2>/dev/null <"/proc/$1/stat" || return 1
    [[ ${rest##*) } != Z* ]]
}

# Whether a process of process group $1 is running.
group_running() {
    local stat rest pgrp
    for stat in /proc/[0-9]*/stat; do
        read -r rest 2>/dev/null <"$stat" || continue
        read -r _ _ pgrp _ <<<"${rest##*) }"
        [[ $pgrp == "$1" ]] && running "${stat//[^0-9]/}" && return 0
    done
    return 1
}

# Remove the <output>.part.<PID> files in OUT whose process is gone (the leftovers of a killed
# run), for the outputs of this run and OUT's record only: never a user's file that merely looks
# alike (downloads/x.tar.part.01), nor a file that is itself an output of this run.
clean_leftovers() {
    local f pid base n=0
    while IFS= read -r -d '' f; do
        pid=${f##*.part.}
        base=${f%.part.*}
        [[ $pid =~ ^[1-9][0-9]*$ && -z ${owner[$f]:-} ]] || continue
        [[ -n ${owner[$base]:-} || $base == "$MANIFEST" ]] || continue
        running "$pid" && continue
        rm -f -- "$f"
        n=$((n + 1))
    done < <(find "$OUT_ROOT" -type f -name '*.part.[0-9]*' -print0)
    if ((n > 0)); then
        echo "reencode.sh: removed $n unfinished output(s) (*.part.PID) of an interrupted run"
    fi
}

summary() {
    local status line=""
    for status in converted copied skipped ignored failed; do
        line+=" $status $(cut -f1 "$RESULTS" | grep -cx "$status" || true)"
    done
    echo "reencode.sh:$line${1:+, $1}"
}

# SIGINT/SIGTERM/SIGHUP: start nothing more, stop the running jobs (each is a process group:
# the job and its ffmpeg), remove their partial outputs, say what was done, exit 128 + signal.
on_signal() {
    trap '' INT TERM HUP
    set +m # no job-control notice for the jobs stopped here
    local pids pid
    pids=$(jobs -p)
    for pid in $pids; do kill -TERM -- "-$pid" 2>/dev/null || true; done
    wait || true
    for pid in $pids; do
        for _ in {1..50}; do group_running "$pid" || break; sleep 0.1; done
        kill -KILL -- "-$pid" 2>/dev/null || true
    done
    if [[ -n ${OUT_ROOT:-} ]]; then clean_leftovers; fi
    summary "not done $((${TOTAL:-0} - $(wc -l <"$RESULTS")))"
    echo "reencode.sh: interrupted by SIG$1: stopped every job; rerun to finish" >&2
    exit "$2"
}

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
mkdir -p -- "$out"
in=$(cd "$in" && pwd)
out=$(cd "$out" && pwd)
in_real=$(cd "$in" && pwd -P)
out_real=$(cd "$out" && pwd -P)
[[ $out_real != "$in_real" && $out_real != "$in_real"/* ]] ||
    { echo "reencode.sh: OUT must lie outside IN" >&2; exit 2; }
[[ $in_real != "$out_real"/* ]] ||
    { echo "reencode.sh: IN must lie outside OUT (outputs would overwrite inputs)" >&2; exit 2; }
FFMPEG_BIN=$(find_ffmpeg)
RUN_TMP=$(mktemp -d)
RESULTS=$RUN_TMP/results
: >"$RESULTS"
IN_ROOT=$in
OUT_ROOT=$out
MANIFEST=$out/.reencode.sources
trap 'rm -rf "$RUN_TMP"' EXIT
trap 'on_signal INT 130' INT
trap 'on_signal TERM 143' TERM
trap 'on_signal HUP 129' HUP

# The work: `todo` holds kind, source, destination triples; `ignored` path, reason pairs;
# `clash` destination, reason pairs (two inputs that would write the same output); `owner` maps
# each destination to its source.
declare -a todo=() ignored=() clash=()
declare -A owner=() frame_dirs=()
add() {
    local kind=$1 src=$2 dst=$3
    if [[ -n ${owner[$dst]:-} ]]; then
        clash+=("$dst" "${src#"$in"/} and ${owner[$dst]#"$in"/} both map here; only the latter used")
    else
        owner[$dst]=$src
        todo+=("$kind" "$src" "$dst")
    fi
}
while IFS= read -r -d '' entry; do
    f=${entry:1}
    name=${f##*/}
    case ${entry:0:1} in
    l) ignored+=("$f" "broken symbolic link") ;;
    s) ignored+=("$f" "OUT itself, reached through a symbolic link") ;;
    o) ignored+=("$f" "not a regular file") ;;
    *)
        if [[ $out${f#"$in"} == "$MANIFEST" ]]; then
            ignored+=("$f" "the name of the record reencode.sh keeps in OUT")
        elif [[ ${name,,} =~ \.($IMAGE_EXT)$ ]]; then
            frame_dirs[${f%/*}]=1
        elif [[ ${name,,} =~ \.($VIDEO_EXT)$ ]]; then
            dst="$out${f#"$in"}"
            add video "$f" "${dst%.*}.mp4"
        else
            add copy "$f" "$out${f#"$in"}"
        fi
        ;;
    esac
done < <(LC_ALL=C find -L "$in" -mindepth 1 \( -samefile "$out" -printf 's%p\0' -prune \
    -o -type d -o -type f -printf 'f%p\0' -o -type l -printf 'l%p\0' -o -printf 'o%p\0' \) \
    2>"$RUN_TMP/find.err" | LC_ALL=C sort -z)
# find -L reports loops (and unreadable folders) on stderr and goes on: each is an ignored item.
loop="^find: File system loop detected; '(.*)' is part of the same file system loop as '(.*)'\\.$"
while IFS= read -r line; do
    if [[ $line =~ $loop ]]; then
        ignored+=("${BASH_REMATCH[1]}" "symbolic link loop: leads back to ${BASH_REMATCH[2]}")
    else
        ignored+=("$in" "${line#find: }")
    fi
done <"$RUN_TMP/find.err"
while IFS= read -r -d '' dir; do
    if [[ $dir == "$in" ]]; then add frames "$dir" "$out/${in##*/}.mp4"; else
        add frames "$dir" "$out${dir#"$in"}.mp4"; fi
done < <(if ((${#frame_dirs[@]})); then printf '%s\0' "${!frame_dirs[@]}" | LC_ALL=C sort -z; fi)

TOTAL=$(((${#todo[@]} / 3) + (${#ignored[@]} + ${#clash[@]}) / 2))
if ((${#todo[@]} == 0)); then
    echo "reencode.sh: nothing to convert in $in: no video (.${VIDEO_EXT//|/ .}), no folder of" \
        "image frames (.${IMAGE_EXT//|/ .}), no other file" >&2
    for ((i = 0; i < ${#ignored[@]}; i += 2)); do
        echo "  ignored ${ignored[i]} (${ignored[i + 1]})" >&2
    done
    exit 2
fi
clean_leftovers
# OUT's record of what each output was made from (NUL-ended lines "md5 size mtime<TAB>output"),
# rewritten without the outputs that are gone.
declare -A MADE_FROM=()
if [[ -f $MANIFEST ]]; then
    while IFS= read -r -d '' entry; do
        MADE_FROM[$out/${entry#*$'\t'}]=${entry%%$'\t'*}
    done <"$MANIFEST"
fi
for dst in "${!MADE_FROM[@]}"; do
    if [[ -e $dst ]]; then printf '%s\t%s\0' "${MADE_FROM[$dst]}" "${dst#"$out"/}"; fi
done >"$MANIFEST.part.$$" && mv -f -- "$MANIFEST.part.$$" "$MANIFEST"
echo "reencode.sh: $TOTAL items from $in to $out with $jobs jobs ($FFMPEG_BIN)"
for ((i = 0; i < ${#ignored[@]}; i += 2)); do report ignored "${ignored[@]:i:2}"; done
for ((i = 0; i < ${#clash[@]}; i += 2)); do report failed "${clash[@]:i:2}"; done

# The jobs, at most $jobs at a time, each in its own process group (set -m) so that a signal
# handler can stop a job together with its ffmpeg.
set -m
active=0
for ((i = 0; i < ${#todo[@]}; i += 3)); do
    if ((active >= jobs)); then
        wait -n || true
        active=$((active - 1))
    fi
    one "${todo[@]:i:3}" &
    active=$((active + 1))
done
wait || true
set +m

summary
if grep -q "^ignored" "$RESULTS"; then
    echo "reencode.sh: ignored:" >&2
    grep "^ignored" "$RESULTS" | cut -f2- | sed 's/\t/: /; s/^/  /' >&2
fi
if grep -q "^failed" "$RESULTS"; then
    echo "reencode.sh: failed:" >&2
    grep "^failed" "$RESULTS" | cut -f2- | sed 's/\t/: /; s/^/  /' >&2
    exit 1
fi
