#!/bin/sh
# MinIO set-up (compose's minio-init, the dev overlay's minio-bucket Job): the bucket, then one MinIO user per role with its policy from this
# folder (BUCKET replaced by $S3_BUCKET). No itx process uses the root user: workers get
# itx-worker (worker.json), `itx submit` itx-submitter (submitter.json).
set -eu
mc() { command mc --config-dir "${MC_CONFIG_DIR:-$HOME/.mc}" "$@"; }
mc alias set local http://minio:9000 "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD"
mc mb --ignore-existing "local/$S3_BUCKET"
fill() {  # the policy with BUCKET replaced (POSIX sh: mc's image has no sed)
  while IFS= read -r l || [ -n "$l" ]; do
    while :; do
      case "$l" in *BUCKET*) l="${l%%BUCKET*}$S3_BUCKET${l#*BUCKET}" ;; *) break ;; esac
    done
    printf '%s\n' "$l"
  done < "$1"
}
role() {  # role NAME POLICY PASSWORD
  fill "/policies/$2.json" > "/tmp/$2.json"
  mc admin policy create local "itx-$2" "/tmp/$2.json"
  mc admin user add local "$1" "$3"
  mc admin policy attach local "itx-$2" --user "$1" 2>/dev/null || true  # already attached
}
role itx-worker worker "$MINIO_WORKER_PASSWORD"
role itx-submitter submitter "$MINIO_SUBMITTER_PASSWORD"
