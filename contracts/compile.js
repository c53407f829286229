#!/usr/bin/env node
/*
 * Compile the BookMe contracts with the pinned solc-js from node_modules.
 *
 *   node contracts/compile.js          write contracts/build/<Name>.json
 *   node contracts/compile.js --check  exit 1 if contracts/build differs from a fresh compile
 *
 * Imports such as "@openzeppelin/contracts/..." resolve from node_modules/. Output is
 * deterministic (sorted keys, 2-space indent, trailing newline) so the committed build can
 * be compared byte for byte.
 */
'use strict';

const crypto = require('crypto');
const fs = require('fs');
const path = require('path');

const CONTRACTS_DIR = __dirname;
const REPO_ROOT = path.resolve(CONTRACTS_DIR, '..');
const NODE_MODULES = path.join(REPO_ROOT, 'node_modules');
const BUILD_DIR = path.join(CONTRACTS_DIR, 'build');

// Source unit name -> contract names to emit.
const TARGETS = {
  'contracts/BookingEscrow.sol': ['BookingEscrow'],
  'contracts/MockUSDC.sol': ['MockUSDC'],
  // A minimal EIP-1271 smart-contract wallet: tests and the local chain only.
  'contracts/MockERC1271Wallet.sol': ['MockERC1271Wallet'],
};

const EXPECTED_SOLC = '0.8.28';

// Everything that influences the bytecode. viaIR is not needed (the legacy pipeline
// compiles the contracts without "stack too deep"), so it stays off.
const SETTINGS = {
  evmVersion: 'cancun',
  optimizer: { enabled: true, runs: 200 },
  viaIR: false,
  metadata: { bytecodeHash: 'ipfs' },
};

const OUTPUT_SELECTION = {
  '*': {
    '*': [
      'abi',
      'metadata',
      'evm.bytecode.object',
      'evm.bytecode.linkReferences',
      'evm.deployedBytecode.object',
      'evm.deployedBytecode.linkReferences',
    ],
  },
};

function fail(message) {
  process.stderr.write(`compile.js: ${message}\n`);
  process.exit(1);
}

let solc;
try {
  solc = require(path.join(NODE_MODULES, 'solc'));
} catch (err) {
  fail(`cannot load solc from node_modules (run \`npm ci\`): ${err.message}`);
}

function sortKeys(value) {
  if (Array.isArray(value)) return value.map(sortKeys);
  if (value !== null && typeof value === 'object') {
    const out = {};
    for (const key of Object.keys(value).sort()) out[key] = sortKeys(value[key]);
    return out;
  }
  return value;
}

function canonicalJson(value) {
  return JSON.stringify(sortKeys(value), null, 2) + '\n';
}

function sha256(text) {
  return crypto.createHash('sha256').update(text, 'utf8').digest('hex');
}

/** Map a solc source unit name to a file inside the repository (or node_modules). */
function resolveSourceUnit(unitName) {
  if (unitName.includes('\0') || path.isAbsolute(unitName)) return null;
  const base = unitName.startsWith('contracts/') ? REPO_ROOT : NODE_MODULES;
  const full = path.resolve(base, unitName);
  if (!full.startsWith(base + path.sep)) return null; // no escaping via ../
  return full;
}

const loadedSources = {}; // source unit name -> content (everything solc read)

function readSource(unitName) {
  const full = resolveSourceUnit(unitName);
  if (full === null) throw new Error(`refusing to resolve import "${unitName}"`);
  const content = fs.readFileSync(full, 'utf8');
  loadedSources[unitName] = content;
  return content;
}

function findImports(unitName) {
  try {
    return { contents: readSource(unitName) };
  } catch (err) {
    return { error: `File not found or unreadable: ${unitName} (${err.message})` };
  }
}

function compile() {
  const solcVersion = solc.version();
  if (!solcVersion.startsWith(EXPECTED_SOLC + '+')) {
    fail(`expected solc ${EXPECTED_SOLC}, node_modules has ${solcVersion}`);
  }

  const sources = {};
  for (const unitName of Object.keys(TARGETS).sort()) {
    sources[unitName] = { content: readSource(unitName) };
  }
  const input = {
    language: 'Solidity',
    sources,
    settings: Object.assign({}, SETTINGS, { outputSelection: OUTPUT_SELECTION }),
  };

  const output = JSON.parse(solc.compile(JSON.stringify(input), { import: findImports }));
  const messages = output.errors || [];
  const errors = messages.filter((m) => m.severity === 'error');
  for (const m of messages) {
    if (m.severity !== 'error') process.stderr.write(`solc ${m.severity}: ${m.formattedMessage || m.message}\n`);
  }
  if (errors.length > 0) {
    for (const m of errors) process.stderr.write(`solc error: ${m.formattedMessage || m.message}\n`);
    fail(`compilation failed with ${errors.length} error(s)`);
  }

  const artifacts = {};
  for (const [unitName, names] of Object.entries(TARGETS)) {
    for (const name of names) {
      const c = output.contracts && output.contracts[unitName] && output.contracts[unitName][name];
      if (!c) fail(`solc produced no output for ${unitName}:${name}`);
      const links = Object.assign({}, c.evm.bytecode.linkReferences, c.evm.deployedBytecode.linkReferences);
      if (Object.keys(links).length > 0) {
        fail(`${name} needs library linking (${Object.keys(links).join(', ')}); not supported`);
      }
      if (!c.evm.bytecode.object) fail(`${name} has empty bytecode (abstract contract?)`);

      // The metadata lists exactly the source units this contract depends on.
      const deps = Object.keys(JSON.parse(c.metadata).sources).sort();
      const hash = crypto.createHash('sha256');
      hash.update(`solc ${solcVersion}\n`);
      hash.update(`settings ${JSON.stringify(sortKeys(SETTINGS))}\n`);
      for (const dep of deps) {
        if (!(dep in loadedSources)) fail(`internal: source ${dep} was not loaded`);
        hash.update(`source ${dep} ${sha256(loadedSources[dep])}\n`);
      }

      artifacts[`${name}.json`] = canonicalJson({
        contractName: name,
        abi: c.abi,
        bytecode: '0x' + c.evm.bytecode.object,
        deployedBytecode: '0x' + c.evm.deployedBytecode.object,
        sourceHash: hash.digest('hex'),
        compiler: {
          name: 'solc',
          version: solcVersion,
          settings: sortKeys(SETTINGS),
          sources: deps,
        },
      });
    }
  }
  return artifacts;
}

function main(argv) {
  const check = argv.includes('--check');
  const unknown = argv.filter((a) => a !== '--check');
  if (unknown.length > 0) fail(`unknown argument(s): ${unknown.join(' ')} (usage: compile.js [--check])`);

  const artifacts = compile();

  if (check) {
    const problems = [];
    for (const [file, text] of Object.entries(artifacts)) {
      const target = path.join(BUILD_DIR, file);
      if (!fs.existsSync(target)) {
        problems.push(`missing contracts/build/${file}`);
      } else if (fs.readFileSync(target, 'utf8') !== text) {
        problems.push(`contracts/build/${file} differs from a fresh compile`);
      }
    }
    if (fs.existsSync(BUILD_DIR)) {
      for (const file of fs.readdirSync(BUILD_DIR).sort()) {
        if (file.endsWith('.json') && !(file in artifacts)) problems.push(`unexpected contracts/build/${file}`);
      }
    }
    if (problems.length > 0) {
      for (const p of problems) process.stderr.write(`stale build: ${p}\n`);
      fail('contracts/build is out of date; run `npm run compile` and commit contracts/build/');
    }
    process.stdout.write(`contracts/build is up to date (${Object.keys(artifacts).sort().join(', ')})\n`);
    return;
  }

  fs.mkdirSync(BUILD_DIR, { recursive: true });
  for (const [file, text] of Object.entries(artifacts)) {
    fs.writeFileSync(path.join(BUILD_DIR, file), text);
    process.stdout.write(`wrote contracts/build/${file}\n`);
  }
}

main(process.argv.slice(2));
