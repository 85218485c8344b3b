#!/usr/bin/env bash
# Orthanc with its DICOMweb plugin on 127.0.0.1: the PACS the MammoXAI DICOMweb tests and demos talk to.
#
#   scripts/orthanc.sh [start]   install orthanc + orthanc-dicomweb from the Debian packages when missing
#                                (apt-get; needs root), start Orthanc on 127.0.0.1 with a fresh temporary
#                                storage folder, wait until it answers and print its DICOMweb URL
#   scripts/orthanc.sh stop      stop the Orthanc this script started and delete its storage folder
#   scripts/orthanc.sh url       print the DICOMweb URL (whether or not Orthanc runs)
#   scripts/orthanc.sh running   exit 0 when this script's Orthanc runs and answers, else 1 (a caller that starts
#                                Orthanc only for itself, like test.sh, stops it afterwards only if it was not)
#
# Idempotent: `start` when this script's Orthanc already answers only prints the URL. The storage is
# temporary on purpose: this is a test PACS, never a clinical one (no authentication, loopback only).
#
# Environment: ORTHANC_HTTP_PORT (default 8042), ORTHANC_DICOM_PORT (default 4242), ORTHANC_STATE_DIR
# (default ${TMPDIR:-/tmp}/mammoxai-orthanc; holds config, storage, pid and log). Tests read the URL from
# MAMMOXAI_ORTHANC_URL (default http://127.0.0.1:8042/dicom-web), e.g.:
#
#   export MAMMOXAI_ORTHANC_URL=$(scripts/orthanc.sh start | tail -n 1)
set -euo pipefail

HTTP_PORT="${ORTHANC_HTTP_PORT:-8042}"
DICOM_PORT="${ORTHANC_DICOM_PORT:-4242}"
STATE_DIR="${ORTHANC_STATE_DIR:-${TMPDIR:-/tmp}/mammoxai-orthanc}"
PID_FILE="$STATE_DIR/orthanc.pid"
URL="http://127.0.0.1:${HTTP_PORT}/dicom-web"

log() { echo "orthanc.sh: $*" >&2; }

answers() { curl -fsS -m 2 "http://127.0.0.1:${HTTP_PORT}/system" >/dev/null 2>&1; }

running_pid() {
    [[ -f "$PID_FILE" ]] || return 1
    local pid
    pid="$(cat "$PID_FILE")"
    kill -0 "$pid" 2>/dev/null && echo "$pid"
}

plugin_dir() {
    local dir
    for dir in /usr/share/orthanc/plugins /usr/lib/orthanc/plugins /usr/local/share/orthanc/plugins; do
        if compgen -G "$dir/libOrthancDicomWeb.so*" >/dev/null; then echo "$dir"; return 0; fi
    done
    return 1
}

# Debian installs /usr/sbin/Orthanc, which is not on a normal user's PATH
orthanc_bin() {
    command -v Orthanc && return 0
    [[ -x /usr/sbin/Orthanc ]] && echo /usr/sbin/Orthanc
}

install_orthanc() {
    if orthanc_bin >/dev/null && plugin_dir >/dev/null && command -v curl >/dev/null; then return 0; fi
    if [[ "$(id -u)" != 0 ]]; then
        log "Orthanc or its DICOMweb plugin is missing; run as root (or: sudo apt-get install orthanc orthanc-dicomweb curl)"
        exit 1
    fi
    log "installing orthanc, orthanc-dicomweb (Debian packages) ..."
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # policy-rc.d may forbid starting the packaged service (containers): that is fine, we start our own
    apt-get install -y -qq --no-install-recommends orthanc orthanc-dicomweb curl >/dev/null
    plugin_dir >/dev/null || { log "the DICOMweb plugin was not found after installing orthanc-dicomweb"; exit 1; }
}

write_config() {
    mkdir -p "$STATE_DIR/storage"
    cat >"$STATE_DIR/orthanc.json" <<EOF
{
  "Name": "MAMMOXAI-TEST",
  "StorageDirectory": "$STATE_DIR/storage",
  "IndexDirectory": "$STATE_DIR/storage",
  "HttpPort": $HTTP_PORT,
  "DicomPort": $DICOM_PORT,
  "DicomAet": "MAMMOXAI",
  "RemoteAccessAllowed": false,
  "AuthenticationEnabled": false,
  "HttpServerEnabled": true,
  "DicomServerEnabled": true,
  "Plugins": ["$(plugin_dir)"],
  "DicomWeb": {"Enable": true, "Root": "/dicom-web/", "EnableWado": true, "Host": "127.0.0.1", "Ssl": false}
}
EOF
}

running() { running_pid >/dev/null && answers; }

start() {
    if running; then
        log "already running (pid $(running_pid))"
        echo "$URL"
        return 0
    fi
    if answers; then
        log "port $HTTP_PORT already answers but is not this script's Orthanc; set ORTHANC_HTTP_PORT"
        exit 1
    fi
    install_orthanc
    rm -rf "$STATE_DIR"
    write_config
    "$(orthanc_bin)" "$STATE_DIR/orthanc.json" >"$STATE_DIR/orthanc.log" 2>&1 &
    echo $! >"$PID_FILE"
    for _ in $(seq 1 120); do
        if answers; then
            if curl -fsS -m 5 "$URL/studies" >/dev/null; then
                log "Orthanc $(curl -fsS "http://127.0.0.1:${HTTP_PORT}/system" | grep -o '"Version" : "[^"]*"' || true) on 127.0.0.1:$HTTP_PORT, storage $STATE_DIR/storage"
                echo "$URL"
                return 0
            fi
            log "Orthanc answers but DICOMweb does not; see $STATE_DIR/orthanc.log"
            stop
            exit 1
        fi
        running_pid >/dev/null || break
        sleep 0.5
    done
    log "Orthanc did not start; last lines of $STATE_DIR/orthanc.log:"
    tail -n 20 "$STATE_DIR/orthanc.log" >&2 || true
    stop
    exit 1
}

stop() {
    local pid
    if pid="$(running_pid)"; then
        kill "$pid"
        for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
        log "stopped (pid $pid)"
    fi
    rm -rf "$STATE_DIR"
}

case "${1:-start}" in
    start) start ;;
    stop) stop ;;
    url) echo "$URL" ;;
    running) running ;;
    *) echo "usage: $0 [start|stop|url|running]" >&2; exit 2 ;;
esac
