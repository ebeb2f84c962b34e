// Jest stand-in for stylesheets and binary assets imported by modules under test.
module.exports = {};
