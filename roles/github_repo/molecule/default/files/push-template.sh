#!/bin/sh
# push-template.sh WORKDIR URL: commit a README in WORKDIR and push it as main to URL, authenticating with
# $GITHUB_TOKEN through a credential helper in the environment (not in the URL or .git/config).
set -eu
cd "$1"
export GIT_CONFIG_NOSYSTEM=1 GIT_TERMINAL_PROMPT=0
export GIT_AUTHOR_NAME=Molecule GIT_AUTHOR_EMAIL=molecule@example.invalid
export GIT_COMMITTER_NAME=Molecule GIT_COMMITTER_EMAIL=molecule@example.invalid
export GIT_CONFIG_COUNT=1 GIT_CONFIG_KEY_0=credential.helper
export GIT_CONFIG_VALUE_0='!f() { printf "username=x-access-token\npassword=%s\n" "$GITHUB_TOKEN"; }; f'
printf '# Workspace template\n' >README.md
git init -q -b main .
git add README.md
git commit -q -m Template
git push -q "$2" main
